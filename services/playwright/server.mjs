// kiln's browser-automation service: a screenshot or a PDF of a URL, after
// optional scripted steps, with Debian's chromium driven by playwright-core.
// It never downloads a browser. The API is JSON over HTTP on 127.0.0.1
// (docs/connectors.md#playwright):
//
//   GET  /health        200 {status, browser:{connected, version}, jobs, pages_open, counters}
//   POST /jobs          a job; answers 400 naming the field, or 200 with a
//                       server-sent event stream: progress, chunk (base64
//                       pieces of the artefact), then result or error
//   POST /cancel/<id>   closes the job's page; the stream ends with an error
//
// One browser, one context per job, at most --max-concurrency jobs at once.
// Closing the request (the client went away) closes the job's page as well.
import http from 'node:http';
import { createHash, randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';

const LIMITS = {
  bodyBytes: 1024 * 1024, // a job request
  steps: 64,
  stringChars: 8192, // a selector, a value, a key
  urlChars: 8192,
  timeoutMs: 600000,
  waitMs: 60000,
  viewport: 8192,
  maxBytesDefault: 32 * 1024 * 1024, // the artefact
  maxBytesLimit: 256 * 1024 * 1024,
  chunkBytes: 384 * 1024, // raw bytes per chunk event (512 KiB of base64)
};
const WAIT_UNTIL = ['load', 'domcontentloaded', 'networkidle', 'commit'];
const WAIT_STATES = ['attached', 'detached', 'visible', 'hidden'];
const PAPER = ['Letter', 'Legal', 'Tabloid', 'Ledger', 'A0', 'A1', 'A2', 'A3', 'A4', 'A5', 'A6'];
const STEP_KINDS = ['goto', 'click', 'fill', 'press', 'wait_for', 'wait_ms'];

// ---- options ----------------------------------------------------------------

function parseOptions(argv, env) {
  const opts = {
    host: env.PLAYWRIGHT_HOST || '127.0.0.1',
    port: env.PLAYWRIGHT_PORT || '3100',
    chromium: env.PLAYWRIGHT_CHROMIUM || '/usr/bin/chromium',
    maxConcurrency: env.PLAYWRIGHT_MAX_CONCURRENCY || '2',
    allowSchemes: env.PLAYWRIGHT_ALLOW_SCHEMES || '',
  };
  const flags = {
    '--host': 'host',
    '--port': 'port',
    '--chromium': 'chromium',
    '--max-concurrency': 'maxConcurrency',
    '--allow-schemes': 'allowSchemes',
  };
  for (let i = 2; i < argv.length; i++) {
    const key = flags[argv[i]];
    if (!key || i + 1 >= argv.length) usage(`unknown flag or missing value: ${argv[i]}`);
    opts[key] = argv[++i];
  }
  const port = Number(opts.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    usage(`--port: expected an integer 0-65535, got "${opts.port}"`);
  const max = Number(opts.maxConcurrency);
  if (!Number.isInteger(max) || max < 1 || max > 64)
    usage(`--max-concurrency: expected an integer 1-64, got "${opts.maxConcurrency}"`);
  const schemes = opts.allowSchemes.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);
  return { ...opts, port, maxConcurrency: max, schemes: new Set(['http:', 'https:', ...schemes.map((s) => `${s}:`)]) };
}

function usage(problem) {
  process.stderr.write(
    `playwright service: ${problem}\n` +
      'usage: node server.mjs [--port N] [--host 127.0.0.1] [--chromium /usr/bin/chromium]\n' +
      '                       [--max-concurrency 2] [--allow-schemes file,data]\n',
  );
  process.exit(2);
}

const opts = parseOptions(process.argv, process.env);

function log(level, msg, fields = {}) {
  process.stderr.write(`${JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields })}\n`);
}

// ---- validation -------------------------------------------------------------

class BadRequest extends Error {
  constructor(field, expected, got, status = 400) {
    const shown = got === undefined ? 'nothing' : JSON.stringify(got);
    super(`${field}: expected ${expected}, got ${shown && shown.length > 60 ? `${shown.slice(0, 57)}...` : shown}`);
    this.field = field;
    this.status = status;
  }
}

function checkUrl(field, value) {
  if (typeof value !== 'string' || !value || value.length > LIMITS.urlChars)
    throw new BadRequest(field, `an http:// or https:// URL of at most ${LIMITS.urlChars} characters`, value);
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new BadRequest(field, 'an absolute http:// or https:// URL', value);
  }
  if (!opts.schemes.has(url.protocol))
    throw new BadRequest(field, `an http:// or https:// URL (${url.protocol} is refused; the service's --allow-schemes can allow it)`, value);
  return value;
}

function checkString(field, value) {
  if (typeof value !== 'string' || !value || value.length > LIMITS.stringChars)
    throw new BadRequest(field, `a non-empty string of at most ${LIMITS.stringChars} characters`, value);
  return value;
}

function checkInt(field, value, min, max, def) {
  if (value === undefined || value === null) return def;
  if (!Number.isInteger(value) || value < min || value > max)
    throw new BadRequest(field, `an integer ${min}-${max}`, value);
  return value;
}

function checkBool(field, value, def) {
  if (value === undefined || value === null) return def;
  if (typeof value !== 'boolean') throw new BadRequest(field, 'true or false', value);
  return value;
}

function checkEnum(field, value, allowed, def) {
  if (value === undefined || value === null) return def;
  if (!allowed.includes(value)) throw new BadRequest(field, `one of ${allowed.join(', ')}`, value);
  return value;
}

function checkStep(i, step) {
  const at = `steps[${i}]`;
  if (!step || typeof step !== 'object' || Array.isArray(step))
    throw new BadRequest(at, `an object with one of ${STEP_KINDS.join(', ')}`, step);
  const kinds = STEP_KINDS.filter((k) => step[k] !== undefined);
  if (kinds.length !== 1)
    throw new BadRequest(at, `exactly one of ${STEP_KINDS.join(', ')}`, step);
  const kind = kinds[0];
  const out = { kind, timeoutMs: checkInt(`${at}.timeout_ms`, step.timeout_ms, 1, LIMITS.timeoutMs, undefined) };
  if (kind === 'goto') out.url = checkUrl(`${at}.goto`, step.goto);
  else if (kind === 'wait_ms') out.ms = checkInt(`${at}.wait_ms`, step.wait_ms, 0, LIMITS.waitMs);
  else out.selector = checkString(`${at}.${kind}`, step[kind]);
  if (kind === 'fill') {
    if (typeof step.value !== 'string' || step.value.length > LIMITS.stringChars)
      throw new BadRequest(`${at}.value`, `a string of at most ${LIMITS.stringChars} characters`, step.value);
    out.value = step.value;
  }
  if (kind === 'press') out.key = checkString(`${at}.key`, step.key);
  if (kind === 'wait_for') out.state = checkEnum(`${at}.state`, step.state, WAIT_STATES, 'visible');
  return out;
}

// Returns the job a request body describes, or throws BadRequest.
function checkJob(body) {
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new BadRequest('body', 'a JSON object', body);
  const id = body.id === undefined ? randomUUID() : body.id;
  if (typeof id !== 'string' || !/^[A-Za-z0-9._:-]{1,128}$/.test(id))
    throw new BadRequest('id', 'a string of 1-128 letters, digits, ".", "_", ":" or "-"', body.id);
  const job = {
    id,
    url: checkUrl('url', body.url),
    action: checkEnum('action', body.action, ['screenshot', 'pdf'], 'screenshot'),
    fullPage: checkBool('full_page', body.full_page, false),
    waitUntil: checkEnum('wait_until', body.wait_until, WAIT_UNTIL, 'load'),
    timeoutMs: checkInt('timeout_ms', body.timeout_ms, 1, LIMITS.timeoutMs, 30000),
    maxBytes: checkInt('max_bytes', body.max_bytes, 1, LIMITS.maxBytesLimit, LIMITS.maxBytesDefault),
    landscape: checkBool('landscape', body.landscape, false),
    paper: checkEnum('paper', body.paper, PAPER, 'A4'),
    viewport: { width: 1280, height: 720 },
    steps: [],
  };
  if (body.viewport !== undefined && body.viewport !== null) {
    if (typeof body.viewport !== 'object' || Array.isArray(body.viewport))
      throw new BadRequest('viewport', 'an object {width, height}', body.viewport);
    job.viewport.width = checkInt('viewport.width', body.viewport.width, 1, LIMITS.viewport, 1280);
    job.viewport.height = checkInt('viewport.height', body.viewport.height, 1, LIMITS.viewport, 720);
  }
  if (body.steps !== undefined && body.steps !== null) {
    if (!Array.isArray(body.steps) || body.steps.length > LIMITS.steps)
      throw new BadRequest('steps', `an array of at most ${LIMITS.steps} steps`, body.steps);
    job.steps = body.steps.map((step, i) => checkStep(i, step));
  }
  return job;
}

// ---- the browser --------------------------------------------------------------

let browser = null;
let launching = null;
let stopping = false;
const jobs = new Map(); // id -> the running job
const counters = { started: 0, completed: 0, failed: 0, cancelled: 0 };
let pagesOpen = 0;

// The running browser, launched on first use and again after it went away.
async function getBrowser() {
  if (browser && browser.isConnected()) return browser;
  if (stopping) throw new Error('the service is shutting down');
  if (!launching) {
    launching = chromium
      .launch({ executablePath: opts.chromium, headless: true, args: ['--disable-dev-shm-usage'] })
      .then((b) => {
        browser = b;
        b.on('disconnected', () => {
          if (browser === b) browser = null;
          if (!stopping) log('warn', 'chromium went away; it is launched again on the next job');
        });
        log('info', 'chromium launched', { version: b.version(), path: opts.chromium });
        return b;
      })
      .finally(() => {
        launching = null;
      });
  }
  return launching;
}

// ---- running a job -----------------------------------------------------------

class JobError extends Error {
  constructor(code, message, { status, retryable = false } = {}) {
    super(message);
    this.code = code;
    this.status = status;
    this.retryable = retryable;
  }
}

function describeStep(step) {
  if (step.kind === 'goto') return `goto ${step.url}`;
  if (step.kind === 'wait_ms') return `wait ${step.ms} ms`;
  return `${step.kind} ${step.selector}`;
}

async function navigate(page, job, url, field) {
  let response;
  try {
    response = await page.goto(url, { waitUntil: job.waitUntil });
  } catch (e) {
    if (job.stopReason) throw e;
    const timeout = e.name === 'TimeoutError';
    throw new JobError(timeout ? 'timeout' : 'navigation', `${field}: navigating to ${url} failed: ${firstLine(e)}`, {
      retryable: timeout,
    });
  }
  const status = response ? response.status() : 0;
  if (status >= 400)
    throw new JobError('http_status', `${field}: ${url} answered HTTP ${status}`, { status, retryable: status >= 500 || status === 429 });
}

function firstLine(e) {
  return String(e && e.message ? e.message : e).split('\n')[0].slice(0, 300);
}

async function runStep(page, job, step, i) {
  const at = `steps[${i}]`;
  const options = step.timeoutMs ? { timeout: step.timeoutMs } : {};
  try {
    if (step.kind === 'goto') return await navigate(page, job, step.url, `${at}.goto`);
    if (step.kind === 'wait_ms') return await page.waitForTimeout(step.ms);
    const target = page.locator(step.selector).first();
    if (step.kind === 'click') await target.click(options);
    else if (step.kind === 'fill') await target.fill(step.value, options);
    else if (step.kind === 'press') await target.press(step.key, options);
    else await target.waitFor({ state: step.state, ...options });
  } catch (e) {
    if (e instanceof JobError || job.stopReason) throw e;
    if (e.name === 'TimeoutError')
      throw new JobError('selector_timeout', `${at}.${step.kind}: no element matched "${step.selector}" within ${step.timeoutMs || job.timeoutMs} ms`);
    throw new JobError('step', `${at}.${step.kind}: ${firstLine(e)}`);
  }
}

// Settles with promise, or rejects as soon as the job is cancelled or out of
// time, so no browser call can keep a stopped job waiting.
function guard(job, promise) {
  return Promise.race([promise, job.stopped]);
}

// Stops job: its pending browser call rejects and its context closes.
function stopJob(job, reason) {
  if (job.stopReason) return;
  job.stopReason = reason;
  job.stop(reason);
  if (job.context) job.context.close().catch(() => {});
}

// A context for job; counted in pagesOpen until it closes, and closed at
// once should the job have stopped while it was being created.
async function openContext(b, job) {
  const creating = b.newContext({ viewport: job.viewport });
  creating.then(
    (context) => {
      pagesOpen++;
      context.on('close', () => pagesOpen--);
      job.context = context;
      if (job.stopReason) context.close().catch(() => {});
    },
    () => {},
  );
  return guard(job, creating);
}

// Runs job, calling send(event) for each event; resolves once the last one was sent.
async function runJob(job, send) {
  job.stopped = new Promise((_, reject) => {
    job.stop = reject;
  });
  job.stopped.catch(() => {});
  const timer = setTimeout(() => stopJob(job, 'timeout'), job.timeoutMs);
  let b = null;
  try {
    b = await guard(job, getBrowser()).catch((e) => {
      if (job.stopReason) throw e;
      throw new JobError('browser', `chromium (${opts.chromium}) did not start: ${firstLine(e)}`, { retryable: true });
    });
    const context = await openContext(b, job);
    context.setDefaultTimeout(job.timeoutMs);
    const page = await guard(job, context.newPage());
    send({ type: 'progress', percent: 5, message: `opening ${job.url}` });
    await guard(job, navigate(page, job, job.url, 'url'));
    send({ type: 'progress', percent: 40, message: `loaded ${job.url}` });
    for (let i = 0; i < job.steps.length; i++) {
      send({ type: 'progress', percent: 40 + (40 * i) / job.steps.length, message: `step ${i + 1}/${job.steps.length}: ${describeStep(job.steps[i])}` });
      await guard(job, runStep(page, job, job.steps[i], i));
    }
    send({ type: 'progress', percent: 80, message: job.action === 'pdf' ? 'printing the PDF' : 'taking the screenshot' });
    const bytes = await guard(
      job,
      job.action === 'pdf'
        ? page.pdf({ format: job.paper, landscape: job.landscape, printBackground: true })
        : page.screenshot({ fullPage: job.fullPage, type: 'png' }),
    );
    if (bytes.length > job.maxBytes)
      throw new JobError('too_big', `the ${job.action} is ${bytes.length} bytes, over max_bytes (${job.maxBytes})`);
    const title = (await guard(job, page.title())).slice(0, 1024);
    for (let at = 0; at < bytes.length; at += LIMITS.chunkBytes)
      send({ type: 'chunk', data: bytes.subarray(at, at + LIMITS.chunkBytes).toString('base64') });
    send({
      type: 'result',
      id: job.id,
      action: job.action,
      mime: job.action === 'pdf' ? 'application/pdf' : 'image/png',
      bytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
      url: page.url(),
      title,
    });
  } catch (e) {
    if (job.stopReason === 'timeout')
      throw new JobError('timeout', `the job took longer than timeout_ms (${job.timeoutMs} ms)`, { retryable: true });
    if (job.stopReason === 'shutdown') throw new JobError('shutdown', 'the playwright service is shutting down', { retryable: true });
    if (job.stopReason) throw new JobError('cancelled', 'cancelled; the page was closed');
    // A step fails too when chromium dies under it; that is no fault of the step.
    if (b && !b.isConnected()) throw new JobError('browser', `chromium went away during the job: ${firstLine(e)}`, { retryable: true });
    if (e instanceof JobError) throw e;
    throw new JobError('browser', firstLine(e));
  } finally {
    clearTimeout(timer);
    if (job.context) await job.context.close().catch(() => {});
  }
}

// ---- HTTP ---------------------------------------------------------------------

function reply(res, status, doc, headers = {}) {
  const body = JSON.stringify(doc);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    let size = 0;
    req.on('data', (part) => {
      size += part.length;
      if (size > LIMITS.bodyBytes) {
        // Stop reading; the 413 goes out with Connection: close.
        req.removeAllListeners('data');
        req.pause();
        reject(new BadRequest('body', `at most ${LIMITS.bodyBytes} bytes`, `${size}+ bytes`, 413));
      } else parts.push(part);
    });
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

async function health(res) {
  let version = null;
  try {
    version = (await getBrowser()).version();
  } catch (e) {
    log('error', 'chromium did not start', { error: firstLine(e) });
  }
  const connected = Boolean(browser && browser.isConnected());
  reply(res, connected ? 200 : 503, {
    status: connected ? 'ok' : 'unavailable',
    browser: { connected, version, path: opts.chromium },
    jobs: { running: jobs.size, max_concurrency: opts.maxConcurrency },
    pages_open: pagesOpen,
    counters,
  });
}

async function postJob(req, res) {
  let job;
  try {
    const text = await readBody(req);
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      throw new BadRequest('body', 'JSON', `text that is not JSON (${firstLine(e)})`);
    }
    job = checkJob(body);
  } catch (e) {
    if (!(e instanceof BadRequest)) throw e;
    const close = e.status === 413 ? { Connection: 'close' } : {};
    return reply(res, e.status, { error: { message: e.message, field: e.field } }, close);
  }
  if (stopping) return reply(res, 503, { error: { message: 'the playwright service is shutting down' } });
  if (jobs.has(job.id)) return reply(res, 409, { error: { message: `id: job ${job.id} is already running` } });
  if (jobs.size >= opts.maxConcurrency)
    return reply(res, 503, { error: { message: `busy: ${jobs.size} jobs running (max concurrency ${opts.maxConcurrency})` } }, { 'Retry-After': '1' });
  jobs.set(job.id, job);
  counters.started++;
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store' });
  // The client went away before the end: close the page now.
  res.on('close', () => {
    if (!res.writableFinished && !job.done) cancelJob(job, 'the client closed the request');
  });
  const send = (event) => {
    if (!res.destroyed) res.write(`data: ${JSON.stringify(event)}\n\n`);
  };
  try {
    await runJob(job, send);
    counters.completed++;
  } catch (e) {
    const err = e instanceof JobError ? e : new JobError('internal', firstLine(e));
    if (err.code === 'cancelled') counters.cancelled++;
    else counters.failed++;
    log('info', 'job failed', { id: job.id, code: err.code, error: err.message });
    send({ type: 'error', code: err.code, message: err.message, status: err.status, retryable: err.retryable });
  } finally {
    job.done = true;
    jobs.delete(job.id);
    res.end();
  }
}

function cancelJob(job, why) {
  if (job.stopReason) return;
  log('info', 'job cancelled', { id: job.id, why });
  stopJob(job, 'cancelled');
}

async function route(req, res) {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (req.method === 'GET' && path === '/health') return health(res);
  if (req.method === 'POST' && (path === '/jobs' || path === '/run')) return postJob(req, res);
  const cancel = /^\/cancel\/([A-Za-z0-9._:-]{1,128})$/.exec(path);
  if (req.method === 'POST' && cancel) {
    const job = jobs.get(cancel[1]);
    if (!job) return reply(res, 404, { error: { message: `no running job ${cancel[1]}` } });
    cancelJob(job, 'POST /cancel');
    return reply(res, 200, { id: job.id, cancelled: true });
  }
  reply(res, 404, { error: { message: `no such endpoint: ${req.method} ${path}; see GET /health, POST /jobs, POST /cancel/<id>` } });
}

const server = http.createServer((req, res) => {
  route(req, res).catch((e) => {
    log('error', 'request failed', { error: firstLine(e) });
    if (!res.headersSent) reply(res, 500, { error: { message: firstLine(e) } });
    else res.end();
  });
});
server.headersTimeout = 10000;
server.requestTimeout = 0; // a job's stream lasts as long as the job

server.listen(opts.port, opts.host, () => {
  const { port } = server.address();
  // One line on stdout that a supervisor or a test can read.
  process.stdout.write(`${JSON.stringify({ event: 'listening', host: opts.host, port })}\n`);
  getBrowser().catch((e) => log('error', 'chromium did not start', { error: firstLine(e), path: opts.chromium }));
});

async function shutdown(signal) {
  if (stopping) return;
  stopping = true;
  log('info', `${signal}: shutting down`, { running: jobs.size });
  server.close();
  // Running jobs end with a retryable error their clients still receive.
  for (const job of jobs.values()) stopJob(job, 'shutdown');
  const deadline = Date.now() + 5000;
  while (jobs.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  server.closeAllConnections();
  if (browser) await browser.close().catch(() => {});
  process.exit(0);
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
