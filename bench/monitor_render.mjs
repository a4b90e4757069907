// Loads the monitor in Debian's chromium (playwright-core from
// services/playwright) RUNS times, each in a fresh browser context (cold
// cache), and prints one JSON line per run: the milliseconds from navigation
// start until the page marks its first render done (body[data-ready]: the
// machine cards and the first page of jobs are on screen), with the card and
// row counts. Used by bench/monitor_render.sh.
//
//   node monitor_render.mjs URL RUNS [CHROMIUM]
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../services/playwright/package.json'));
const { chromium } = require('playwright-core');

const [url, runs = '5', exe = '/usr/bin/chromium'] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox'] });
for (let i = 0; i < Number(runs); i++) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(url, { waitUntil: 'commit' });
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  const seen = await page.evaluate(() => ({
    ready_ms: Number(document.body.dataset.readyMs),
    machines: document.querySelectorAll('.machine').length,
    rows: document.querySelectorAll('#jobs tbody tr').length,
  }));
  process.stdout.write(JSON.stringify({ run: i + 1, ...seen }) + '\n');
  await context.close();
}
await browser.close();
