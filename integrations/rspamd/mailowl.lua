--[[
mailowl.lua: an rspamd plugin (rspamd 3.4 and later) that asks mailowl about every message and turns
mailowl's decision into rspamd's pre-result, so Postfix -> rspamd's milter proxy -> mailowl refuses a
malicious attachment with 554 5.7.1, defers mail whose attachments are still being analysed with 451 4.7.1
(the sender's retry is answered from mailowl's verdict cache) and adds mailowl's header to accepted mail.

Load it and configure it (standalone rspamd.conf, or /etc/rspamd/rspamd.conf.local on Debian, where the
section's contents can live in /etc/rspamd/local.d/mailowl.conf; see docs/rspamd.md):

  lua = "/usr/share/mailowl/rspamd/mailowl.lua";
  mailowl {
    url = "http://127.0.0.1:8100";   # mailowl serve
    # timeout = 5;                   # seconds for mailowl's answer; past it: fail_action. Keep it above
    #                                #   wait and below rspamd's options.task_timeout (8 s by default)
    # wait = 2;                      # seconds mailowl waits for verdicts before "tempfail" (default: its mail.wait)
    # token = "";                    # mailowl's server.token (Authorization: Bearer)
    # mode = "message";              # "message": POST /v2/messages, mailowl decides with its mail policy
    #                                # "parts": each attachment to the PeekabooAV v1 API (/v1/scan,
    #                                #   /v1/report/N): works against PeekabooAV 2.1 and mailowl alike
    # polls = 10;                    # parts mode: report requests per attachment before "still analysing"
    # fail_action = "soft reject";   # mailowl unreachable, slow or answering an error: "soft reject",
    #                                #   "reject" or "no action" (let the mail through)
    # fail_message = "Attachment scanner unavailable, try again later";
    # header = true;                 # add mailowl's header (X-Mailowl-Result) to accepted mail
    # keepalive = true;              # reuse HTTP connections to mailowl (message mode)
    # actions { reject = "reject"; tempfail = "soft reject"; quarantine = "quarantine"; discard = "discard"; }
    # reject_message = "Message rejected: it carries a malicious attachment";   # parts mode texts
    # tempfail_message = "Attachment analysis in progress, try again later";
    # failed_message = "Attachment analysis failed, try again later";
  }

Symbols (score 0 unless given in the section's `scores { MAILOWL_BAD = 10; }`), each with the parts and
their verdicts as options ("cat.png.bat:bad"), so rspamd's log and history show why:
  MAILOWL_BAD         a part is malicious (mailowl: reject, quarantine or discard)
  MAILOWL_IN_PROCESS  a part is still being analysed (tempfail; the retry is answered from the cache)
  MAILOWL_FAILED      an analysis failed or the message could not be taken apart
  MAILOWL_CLEAN       accepted
  MAILOWL_FAIL        mailowl could not be asked: unreachable, too slow, or an HTTP error

rspamd's milter proxy answers "reject" with 554 5.7.1 and "soft reject" with 451 4.7.1, the message text
being the pre-result's message: mailowl's text and support id, e.g.
  554 5.7.1 Message rejected: it carries a malicious attachment (support-id: mo-1a2b3c4d5e6f)
Messages handed to rspamd by rspamc or the controller are checked too.
]]--

if confighelp then
  return
end

local rspamd_logger = require "rspamd_logger"
local rspamd_http = require "rspamd_http"
local ucl = require "ucl"

local N = 'mailowl'

local settings = {
  url = 'http://127.0.0.1:8100',
  timeout = 5.0,
  wait = nil,
  token = '',
  mode = 'message',
  polls = 10,
  fail_action = 'soft reject',
  fail_message = 'Attachment scanner unavailable, try again later',
  header = true,
  keepalive = true,
  header_name = 'X-Mailowl-Result',
  actions = {
    reject = 'reject',
    tempfail = 'soft reject',
    quarantine = 'quarantine',
    discard = 'discard',
  },
  reject_message = 'Message rejected: it carries a malicious attachment',
  tempfail_message = 'Attachment analysis in progress, try again later',
  failed_message = 'Attachment analysis failed, try again later',
  scores = {},
}

local SYMBOLS = {
  MAILOWL_BAD = 'mailowl: malicious attachment',
  MAILOWL_IN_PROCESS = 'mailowl: attachment analysis in progress',
  MAILOWL_FAILED = 'mailowl: attachment analysis failed or message not analysable',
  MAILOWL_CLEAN = 'mailowl: message accepted',
  MAILOWL_FAIL = 'mailowl: could not be asked',
}

-- percent-encoding for query parameters
local function urlencode(s)
  return (tostring(s):gsub('[^%w%-%._~]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end

local function parse_json(body)
  if not body then
    return nil, 'empty answer'
  end
  local parser = ucl.parser()
  local ok, err = parser:parse_string(tostring(body))
  if not ok then
    return nil, err
  end
  return parser:get_object()
end

local function base_headers()
  local hdrs = {}
  if settings.token and settings.token ~= '' then
    hdrs['Authorization'] = 'Bearer ' .. settings.token
  end
  return hdrs
end

local function unreachable(task, what)
  rspamd_logger.errx(task, '%s: cannot ask mailowl: %s', N, what)
  task:insert_result('MAILOWL_FAIL', 1.0, what)
  if settings.fail_action and settings.fail_action ~= 'no action' then
    task:set_pre_result(settings.fail_action, settings.fail_message, N)
  end
end

local function add_header(task, value)
  if settings.header and value then
    task:set_milter_reply({add_headers = {[settings.header_name] = value}})
  end
end

-- mode = "message": one POST /v2/messages, mailowl's decision applied as it is ---------------------------
local SYMBOL_OF = {reject = 'MAILOWL_BAD', quarantine = 'MAILOWL_BAD', discard = 'MAILOWL_BAD'}

local function apply_decision(task, decision)
  local options = {}
  for _, part in ipairs(decision.parts or {}) do
    local result = part.result
    if type(result) ~= 'string' then
      result = part.state or 'pending'
    end
    table.insert(options, string.format('%s:%s', part.filename or part.content_type or 'part', result))
  end
  local action = decision.action
  local symbol = SYMBOL_OF[action]
  if not symbol then
    if decision.verdict == 'pending' then
      symbol = 'MAILOWL_IN_PROCESS'
    elseif decision.verdict == 'failed' or decision.verdict == 'unparsable' or decision.verdict == 'bad' then
      symbol = 'MAILOWL_FAILED'
    elseif action == 'tempfail' then
      symbol = 'MAILOWL_FAILED'  -- e.g. mailowl's analysis queue is full
    else
      symbol = 'MAILOWL_CLEAN'
    end
  end
  table.insert(options, 'support-id:' .. tostring(decision.support_id))
  task:insert_result(symbol, 1.0, options)
  local rspamd_action = settings.actions[action]
  if rspamd_action and rspamd_action ~= 'no action' then
    task:set_pre_result(rspamd_action,
        string.format('%s (support-id: %s)', decision.text, decision.support_id), N)
  end
  if type(decision.header) == 'table' and (action == 'accept' or action == 'quarantine') then
    add_header(task, decision.header.value)
  end
end

local function check_message(task)
  local query = {}
  local function add(key, value)
    if value and value ~= '' then
      table.insert(query, key .. '=' .. urlencode(value))
    end
  end
  local from = task:get_from('smtp')
  if from and from[1] then
    add('from', from[1].addr)
  end
  for _, rcpt in ipairs(task:get_recipients('smtp') or {}) do
    add('rcpt', rcpt.addr)
  end
  local ip = task:get_from_ip()
  if ip and ip:is_valid() then
    add('ip', tostring(ip))
  end
  add('helo', task:get_helo())
  add('hostname', task:get_hostname())
  add('queue_id', task:get_queue_id())
  if settings.wait then
    add('wait', tostring(settings.wait))
  end
  local url = settings.url .. '/v2/messages'
  if #query > 0 then
    url = url .. '?' .. table.concat(query, '&')
  end
  local hdrs = base_headers()
  hdrs['Content-Type'] = 'message/rfc822'

  local function callback(err, code, body)
    if err then
      unreachable(task, tostring(err))
      return
    end
    if code ~= 200 then
      unreachable(task, string.format('HTTP %s: %s', code, tostring(body)))
      return
    end
    local decision, perr = parse_json(body)
    if not decision or type(decision) ~= 'table' or not decision.action then
      unreachable(task, 'unreadable answer: ' .. tostring(perr))
      return
    end
    rspamd_logger.infox(task, '%s: %s %s (%s)', N, decision.action, decision.support_id, decision.verdict)
    apply_decision(task, decision)
  end

  -- false: the request never started (e.g. the name does not resolve) and the callback will not run;
  -- the mail must not pass unchecked
  local started = rspamd_http.request({
    task = task,
    url = url,
    method = 'POST',
    body = task:get_content(),
    headers = hdrs,
    timeout = settings.timeout,
    keepalive = settings.keepalive,
    callback = callback,
  })
  if not started then
    unreachable(task, 'the request to ' .. settings.url .. ' could not be started')
  end
end

-- mode = "parts": every attachment through the PeekabooAV v1 API ------------------------------------------
local RANK = {pending = 7, bad = 6, failed = 5, unknown = 4, good = 3, ignored = 2, unchecked = 1}

local function check_parts(task)
  local parts = {}
  for _, part in ipairs(task:get_parts() or {}) do
    local filename = part:get_filename()
    if part:is_attachment() or (filename and filename ~= '') then
      table.insert(parts, part)
    end
  end
  if #parts == 0 then
    task:insert_result('MAILOWL_CLEAN', 1.0, 'no attachments')
    return
  end
  local results = {}
  local outstanding = #parts
  local failed_to_ask = nil

  local function finish()
    if failed_to_ask then
      unreachable(task, failed_to_ask)
      return
    end
    local worst, options, jobs, reasons = 'unchecked', {}, {}, {}
    for _, r in ipairs(results) do
      table.insert(options, string.format('%s:%s', r.name, r.result))
      table.insert(jobs, tostring(r.job))
      if (RANK[r.result] or 0) > (RANK[worst] or 0) then
        worst = r.result
      end
      if r.result == 'bad' and r.reason then
        table.insert(reasons, r.reason)
      end
    end
    local support = 'peekaboo-job ' .. table.concat(jobs, ',')
    table.insert(options, 'support-id:' .. support)
    local symbol, action, text
    if worst == 'bad' then
      symbol, action, text = 'MAILOWL_BAD', settings.actions.reject, settings.reject_message
    elseif worst == 'pending' then
      symbol, action, text = 'MAILOWL_IN_PROCESS', settings.actions.tempfail, settings.tempfail_message
    elseif worst == 'failed' then
      symbol, action, text = 'MAILOWL_FAILED', settings.actions.tempfail, settings.failed_message
    else
      symbol = 'MAILOWL_CLEAN'
    end
    task:insert_result(symbol, 1.0, options)
    rspamd_logger.infox(task, '%s: parts %s -> %s (%s) %s', N, options, worst, support, reasons)
    if action and action ~= 'no action' then
      task:set_pre_result(action, string.format('%s (support-id: %s)', text, support), N)
    elseif symbol == 'MAILOWL_CLEAN' then
      add_header(task, string.format('%s; support-id=%s', worst, support))
    end
  end

  local function done_one()
    outstanding = outstanding - 1
    if outstanding == 0 then
      finish()
    end
  end

  local function not_started(what)
    failed_to_ask = failed_to_ask or ('the request to ' .. what .. ' could not be started')
    done_one()
  end

  local function poll(entry, left)
    local started = rspamd_http.request({
      task = task,
      url = string.format('%s/v1/report/%s', settings.url, entry.job),
      headers = base_headers(),
      timeout = settings.timeout,
      callback = function(err, code, body)
        if err then
          failed_to_ask = failed_to_ask or tostring(err)
        elseif code == 200 then
          local report = parse_json(body)
          if type(report) == 'table' and report.result then
            entry.result, entry.reason = report.result, report.reason
          else
            failed_to_ask = failed_to_ask or 'unreadable report'
          end
        elseif code == 404 and left > 1 then
          poll(entry, left - 1)  -- PeekabooAV answers 404 while the job is pending
          return
        elseif code == 404 then
          entry.result = 'pending'
        else
          failed_to_ask = failed_to_ask or string.format('HTTP %s from /v1/report', code)
        end
        done_one()
      end,
    })
    if not started then
      not_started(settings.url .. '/v1/report')
    end
  end

  for _, part in ipairs(parts) do
    local name = part:get_filename() or 'attachment'
    local mtype, subtype = part:get_type()
    local ctype = string.format('%s/%s', mtype or 'application', subtype or 'octet-stream')
    local boundary = '----mailowl-rspamd-' .. tostring(math.random(1, 2^30))
    local safe_name = name:gsub('[\r\n"\\]', '_')
    local body = {
      string.format('--%s\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n' ..
          'Content-Type: %s\r\n\r\n', boundary, safe_name, ctype),
      part:get_content(),
      string.format('\r\n--%s--\r\n', boundary),
    }
    local hdrs = base_headers()
    hdrs['Content-Type'] = 'multipart/form-data; boundary=' .. boundary
    hdrs['X-Content-Disposition'] = part:is_attachment() and 'attachment' or 'inline'
    local entry = {name = name, result = 'pending'}
    table.insert(results, entry)
    local started = rspamd_http.request({
      task = task,
      url = settings.url .. '/v1/scan',
      method = 'POST',
      body = body,
      headers = hdrs,
      timeout = settings.timeout,
      callback = function(err, code, rbody)
        local answer = (not err and code == 200) and parse_json(rbody) or nil
        if type(answer) == 'table' and answer.job_id then
          entry.job = answer.job_id
          poll(entry, settings.polls)
          return
        end
        failed_to_ask = failed_to_ask or tostring(err or string.format('HTTP %s from /v1/scan', code))
        done_one()
      end,
    })
    if not started then
      not_started(settings.url .. '/v1/scan')
    end
  end
end

-- registration ---------------------------------------------------------------------------------------------
local opts = rspamd_config:get_all_opt(N)
if not opts then
  rspamd_logger.infox(rspamd_config, '%s: no "%s" section, plugin disabled', N, N)
  return
end
for k, v in pairs(opts) do
  if k == 'actions' and type(v) == 'table' then
    for action, rspamd_action in pairs(v) do
      settings.actions[action] = rspamd_action
    end
  else
    settings[k] = v
  end
end
settings.url = tostring(settings.url):gsub('/+$', '')
settings.timeout = tonumber(settings.timeout) or 5.0
settings.polls = math.max(1, tonumber(settings.polls) or 10)
settings.wait = settings.wait and tonumber(settings.wait) or nil
if settings.mode ~= 'message' and settings.mode ~= 'parts' then
  rspamd_logger.errx(rspamd_config, '%s: mode must be "message" or "parts", not %s; plugin disabled', N,
      settings.mode)
  return
end

local id = rspamd_config:register_symbol({
  name = 'MAILOWL_CHECK',
  type = 'prefilter',
  callback = settings.mode == 'parts' and check_parts or check_message,
  priority = 10,
  flags = 'empty,nostat',
})
for name, description in pairs(SYMBOLS) do
  rspamd_config:register_symbol({
    name = name,
    type = 'virtual',
    parent = id,
    score = tonumber(settings.scores[name]) or 0.0,
    description = description,
    group = 'mailowl',
    flags = 'nostat',
  })
end
rspamd_logger.infox(rspamd_config, '%s: asking %s (mode %s, timeout %s s)', N, settings.url, settings.mode,
    settings.timeout)
