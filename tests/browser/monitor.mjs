// Drives the monitor UI in Debian's chromium (playwright-core from
// services/playwright/node_modules). Run by tests/e2e/test_monitor.c against
// a real redis, `kiln hub` and `kiln machine run` on loopback.
//
//   node monitor.mjs --url URL --machine ID --screenshot PATH [--token T]
//                    [--expect-role admin|read] [--chromium PATH]
//
// admin (the default): the page loads, the machine's card appears online,
// a job submitted from the form runs to completion with its progress bar
// seen at two or more distinct values between 0 and 100 (across a dropped
// event socket, which the page resumes with ?since=), its job page shows
// the event timeline up to completed, and the machine's worker restarts from
// its card's button. read: the submit form and the
// restart buttons are not shown. Prints one JSON line with what it saw;
// exits 0 on success, 1 with the reason on stderr.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../services/playwright/package.json'));
const { chromium } = require('playwright-core');

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' }, machine: { type: 'string' }, screenshot: { type: 'string' },
    token: { type: 'string', default: '' }, 'expect-role': { type: 'string', default: 'admin' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
const TIMEOUT_MS = 30000;

async function useToken(page) {
  if (!opt.token) return;
  await page.fill('#token', opt.token);
  await page.click('#auth button');
}

async function adminFlow(page, seen) {
  await page.waitForSelector('#submit:not([hidden])', { timeout: TIMEOUT_MS });
  await page.fill('#submit [name=service]', 'simulation');
  await page.fill('#submit [name=payload]', '{"duration_ms": 3000, "steps": 12}');
  await page.selectOption('#machine-select', opt.machine);
  await page.click('#submit button[type=submit]');
  const link = await page.waitForSelector('#submitted-job', { timeout: TIMEOUT_MS });
  const job = await link.getAttribute('data-job');
  // Every value the job's progress bar takes, whichever row element shows it.
  await page.evaluate((id) => {
    window.__progress = new Set();
    const note = () => {
      const bar = document.querySelector(`tr[data-job="${id}"] progress`);
      if (bar) window.__progress.add(Number(bar.value));
    };
    new MutationObserver(note).observe(document.querySelector('#jobs tbody'),
      { subtree: true, childList: true, attributes: true });
    note();
  }, job);
  // Drop the event socket while the job runs: the page reconnects with the
  // cursor of the last event it saw (?since=), and the bar keeps moving.
  await page.waitForFunction((id) => window.__progress.size >= 2, job, { timeout: TIMEOUT_MS });
  await page.evaluate(() => state.socket.close());
  await page.waitForFunction(() => state.socket.readyState === WebSocket.OPEN && /since=/.test(state.socket.url), null, { timeout: TIMEOUT_MS });
  seen.resumed = true;
  await page.waitForSelector(`tr[data-job="${job}"][data-state="completed"]`, { timeout: TIMEOUT_MS });
  const values = await page.evaluate(() => [...window.__progress].sort((a, b) => a - b));
  seen.job = job;
  seen.progress_values = values;
  const moving = values.filter((v) => v > 0 && v < 100);
  if (moving.length < 2) throw new Error(`progress bar of ${job} took ${JSON.stringify(values)}: fewer than two values between 0 and 100`);
  await page.screenshot({ path: opt.screenshot, fullPage: true });

  // The job page: its timeline, followed from the job's event stream.
  await page.click(`tr[data-job="${job}"] a`);
  await page.waitForSelector('#job-page:not([hidden]) [data-field="state"]', { timeout: TIMEOUT_MS });
  await page.waitForFunction(() => /completed/.test(document.querySelector('#timeline').textContent), null, { timeout: TIMEOUT_MS });
  seen.timeline = await page.locator('#timeline li').count();
  await page.click('#job-page a[href="#"]');
  await page.waitForSelector('#overview:not([hidden])', { timeout: TIMEOUT_MS });

  // Restart the worker from the machine card; its restart count goes up.
  const service = `.machine[data-id="${opt.machine}"] li[data-service^="worker-"]`;
  const name = await page.getAttribute(service, 'data-service');
  const before = await page.textContent(`${service} .muted`);
  await page.click(`${service} button.restart`);
  await page.waitForFunction(([sel, text]) => {
    const el = document.querySelector(sel);
    return el && el.textContent !== text && !document.querySelector('#error:not([hidden])');
  }, [`${service} .muted`, before], { timeout: TIMEOUT_MS });
  seen.restarted = name;
  seen.restarts = await page.textContent(`${service} .muted`);
}

async function readFlow(page, seen) {
  await page.waitForFunction(() => document.querySelector('#role').textContent.includes('read'), null, { timeout: TIMEOUT_MS });
  seen.submit_hidden = await page.isHidden('#submit');
  seen.restart_buttons = await page.locator('button.restart').count();
  if (!seen.submit_hidden || seen.restart_buttons !== 0) throw new Error('a read token sees admin controls');
  await page.screenshot({ path: opt.screenshot, fullPage: true });
}

const browser = await chromium.launch({ executablePath: opt.chromium, args: ['--no-sandbox'] });
const seen = {};
let code = 0;
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  page.on('pageerror', (e) => { seen.page_errors = (seen.page_errors || []).concat(String(e)); });
  await page.goto(opt.url);
  await useToken(page);
  await page.waitForSelector('body[data-ready="1"]', { timeout: TIMEOUT_MS });
  await page.waitForSelector(`.machine[data-id="${opt.machine}"][data-state="online"], .machine[data-id="${opt.machine}"][data-state="busy"]`, { timeout: TIMEOUT_MS });
  await page.waitForSelector('#live.online', { timeout: TIMEOUT_MS });
  seen.machine_card = true;
  if (opt['expect-role'] === 'read') await readFlow(page, seen);
  else await adminFlow(page, seen);
  if (seen.page_errors) throw new Error('script errors on the page: ' + seen.page_errors.join('; '));
} catch (e) {
  code = 1;
  seen.error = String(e.message || e);
  await page.screenshot({ path: opt.screenshot, fullPage: true }).catch(() => {});
  process.stderr.write(`monitor.mjs: ${seen.error}\n`);
}
await browser.close();
process.stdout.write(JSON.stringify(seen) + '\n');
process.exit(code);
