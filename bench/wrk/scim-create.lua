-- wrk script for bench/scim-http.sh: every request creates a new SCIM user (a unique
-- userName and externalId). Environment: SCIM_TOKEN (the connection's bearer), PREFIX
-- (makes names unique across rounds).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/scim+json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("SCIM_TOKEN")
local prefix = os.getenv("PREFIX") or "u"
local n = 0

request = function()
  n = n + 1
  local name = prefix .. "-" .. n .. "@acme.io"
  return wrk.format(nil, nil, nil,
    '{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"' .. name ..
    '","externalId":"x-' .. name .. '","active":true}')
end
