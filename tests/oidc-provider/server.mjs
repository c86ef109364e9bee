// The OpenID provider Gatehouse's SSO tests log in against: panva's `oidc-provider`
// (OpenID Certified), with its own discovery, authorization, token and JWKS endpoints,
// sessions, grants, one-time codes and PKCE. Only two things are ours:
//
// - the interaction (login) page: a form where the person says who they are — any subject,
//   email and name are accepted, like the package's own development interactions, but
//   completing login and consent in one step so a test can walk it;
// - the account store: the claims submitted on that form, kept in memory by subject.
//
// Usage: node server.mjs '<json>' with {"clients": [{client_id, client_secret, redirect_uris}]}.
// Listens on 127.0.0.1, an ephemeral port, and prints one JSON line {"issuer": ...} when ready.
// Exits when its stdin closes, so it never outlives the test that started it.

import http from "node:http";
import crypto from "node:crypto";
import Provider from "oidc-provider";

const options = JSON.parse(process.argv[2] ?? "{}");
const accounts = new Map();

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: "jwk" }), kid: "test-op-rs256", alg: "RS256", use: "sig" };

const provider = new Provider(issuer, {
  clients: (options.clients ?? []).map((c) => ({
    grant_types: ["authorization_code"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
    ...c,
  })),
  jwks: { keys: [signing] },
  cookies: { keys: [crypto.randomBytes(32).toString("hex")] },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "given_name", "family_name"],
  },
  // Like Okta and Entra ID, put the scopes' claims in the ID token of the code flow too
  // (the certified default keeps them for the userinfo endpoint).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => {
    const claims = accounts.get(sub);
    if (!claims) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...claims }) };
  },
  ttl: options.ttl ?? {},
});
provider.on("server_error", (ctx, err) => console.error("server_error", err));

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

async function interaction(req, res, uid, submit) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error("interaction mismatch");
  if (!submit) {
    res.setHeader("content-type", "text/html; charset=utf-8");
    res.end(`<!doctype html><title>Sign in</title>
<form method="post" action="/interaction/${escape(uid)}/login">
<label>Subject <input name="sub" required></label>
<label>Email <input name="email" type="email" required></label>
<label>Name <input name="name"></label>
<button>Sign in to ${escape(details.params.client_id)}</button>
</form>`);
    return;
  }
  const form = await readForm(req);
  if (!form.sub) throw new Error("sub is required");
  const claims = { email: form.email, email_verified: true };
  for (const k of ["name", "given_name", "family_name"]) if (form[k]) claims[k] = form[k];
  accounts.set(form.sub, claims);
  const grant = new provider.Grant({ accountId: form.sub, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: form.sub }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

const callback = provider.callback();
server.on("request", (req, res) => {
  const match = /^\/interaction\/([^/?]+)(\/login)?(?:\?|$)/.exec(req.url);
  if (!match) return callback(req, res);
  interaction(req, res, match[1], Boolean(match[2]) && req.method === "POST").catch((err) => {
    res.statusCode = 400;
    res.setHeader("content-type", "text/plain");
    res.end(`interaction failed: ${err.message}`);
  });
});

process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
console.log(JSON.stringify({ issuer }));
