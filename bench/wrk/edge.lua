-- wrk script for bench/edge-http.sh. Environment:
--   METHOD    request method (default GET)
--   TOKENS    a file of tokens, one per line: each request sends the next one as its
--             bearer (unique tokens); without it, every request is the same one, built
--             once by wrk from the command line's -H headers (no Lua per request)
--   OFFSET    where in TOKENS to start (so rounds of one run use different tokens)
--   DELAY_MS  pause per connection between a response and its next request (paced load)
-- Refusals are not checked here (a `response` hook would cost Lua per request): the
-- script fails on wrk's "Non-2xx or 3xx responses" line instead.
wrk.method = os.getenv("METHOD") or "GET"

local file = os.getenv("TOKENS")
if file then
  local tokens = {}
  for line in io.lines(file) do
    tokens[#tokens + 1] = line
  end
  local next_token = (tonumber(os.getenv("OFFSET") or "0") % #tokens) + 1
  request = function()
    local token = tokens[next_token]
    next_token = next_token % #tokens + 1
    return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
  end
end

local pause = tonumber(os.getenv("DELAY_MS") or "")
if pause then
  delay = function()
    return pause
  end
end
