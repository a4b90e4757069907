// BullMQ side of the kiln benchmark (bench/run.sh runs it; see BENCHMARKS.md).
//
//   node bench/bullmq.mjs throughput --scratch DIR --port P --concurrency N --jobs J
//   node bench/bullmq.mjs latency    --scratch DIR --port P --jobs J --interval-ms 10
//
// Each mode prints one JSON line on stdout. The producer (Queue) runs in this
// process and the Worker in a forked child process, as kiln's producer and
// `kiln worker` are separate processes; both read the same monotonic clock
// (process.hrtime), so times compare across the two processes.
//
// bullmq and ioredis are loaded from the scratch folder run.sh installed them
// into (bench/.scratch/node_modules), through createRequire, so the script
// needs nothing installed next to it.

import { fork } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);

function parseArgs(argv) {
  const opts = { mode: argv[0], scratch: null, port: 6379, concurrency: 1, jobs: 1000,
                 intervalMs: 10, batch: 1000, warmup: 20, queue: 'bench', timeoutS: 120 };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in opts)) throw new Error(`bullmq.mjs: unknown option ${argv[i]}`);
    opts[key] = typeof opts[key] === 'number' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!opts.scratch) throw new Error('bullmq.mjs: --scratch DIR is required');
  return opts;
}

function load(scratch) {
  const req = createRequire(path.join(path.resolve(scratch), 'package.json'));
  const IORedis = req('ioredis');
  const bullmq = req('bullmq');
  return { IORedis: IORedis.default ?? IORedis, bullmq };
}

// Microseconds on the monotonic clock, shared by every process on the machine.
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function percentile(sorted, p) {
  if (sorted.length === 0) return 0;
  const idx = Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  return sorted[Math.max(0, idx)];
}

function connect(IORedis, port) {
  return new IORedis({ host: '127.0.0.1', port, maxRetriesPerRequest: null });
}

// ---- worker child --------------------------------------------------------

async function runWorker(opts) {
  const { IORedis, bullmq } = load(opts.scratch);
  const connection = connect(IORedis, opts.port);
  const latencies = [];
  let completed = 0;
  let lastUs = 0;
  const processor = opts.mode === 'worker-latency'
    ? async (job) => { latencies.push(nowUs() - job.data.t_us); }
    : async () => {};
  const worker = new bullmq.Worker(opts.queue, processor, {
    connection, concurrency: opts.concurrency,
    removeOnComplete: { count: 0 }, removeOnFail: { count: 0 },
  });
  worker.on('completed', () => {
    completed += 1;
    if (completed === opts.jobs) {
      lastUs = nowUs();
      process.send({ type: 'done', lastUs, latencies });
    }
  });
  worker.on('error', (err) => { process.send({ type: 'error', message: String(err) }); });
  await worker.waitUntilReady();
  process.send({ type: 'ready' });
  // The producer is gone (killed by run.sh's timeout, say): do not linger.
  process.on('disconnect', () => process.exit(1));
  process.on('message', async (msg) => {
    if (msg.type === 'stop') {
      await worker.close();
      await connection.quit();
      process.exit(0);
    }
  });
}

// ---- producer (parent) ---------------------------------------------------

function startWorker(opts, mode) {
  const args = [mode, '--scratch', opts.scratch, '--port', String(opts.port),
                '--concurrency', String(opts.concurrency), '--jobs', String(opts.jobs),
                '--queue', opts.queue];
  const child = fork(SELF, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const waiters = [];
  const inbox = [];
  child.on('message', (msg) => {
    if (msg.type === 'error') console.error(`bullmq worker: ${msg.message}`);
    const w = waiters.findIndex((x) => x.type === msg.type);
    if (w >= 0) waiters.splice(w, 1)[0].resolve(msg); else inbox.push(msg);
  });
  child.on('exit', (code) => {
    for (const w of waiters) w.reject(new Error(`bullmq worker exited with ${code}`));
  });
  const next = (type, timeoutMs) => {
    const i = inbox.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bullmq worker: no '${type}' within ${timeoutMs} ms`)),
                               timeoutMs);
      waiters.push({ type, resolve: (m) => { clearTimeout(timer); resolve(m); },
                     reject: (e) => { clearTimeout(timer); reject(e); } });
    });
  };
  const stop = async () => {
    if (child.exitCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.send({ type: 'stop' });
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  return { child, next, stop };
}

async function throughput(opts) {
  const { IORedis, bullmq } = load(opts.scratch);
  const connection = connect(IORedis, opts.port);
  const queue = new bullmq.Queue(opts.queue, {
    connection, defaultJobOptions: { removeOnComplete: true, removeOnFail: true },
  });
  await queue.waitUntilReady();
  const worker = startWorker(opts, 'worker-throughput');
  try {
    await worker.next('ready', 30000);
    const t0 = nowUs();
    for (let sent = 0; sent < opts.jobs; sent += opts.batch) {
      const n = Math.min(opts.batch, opts.jobs - sent);
      const batch = new Array(n);
      for (let i = 0; i < n; i++) batch[i] = { name: 'noop', data: {} };
      await queue.addBulk(batch);
    }
    const done = await worker.next('done', opts.timeoutS * 1000);
    const seconds = (done.lastUs - t0) / 1e6;
    console.log(JSON.stringify({
      system: 'bullmq', bench: 'throughput', concurrency: opts.concurrency, jobs: opts.jobs,
      seconds: Number(seconds.toFixed(4)), jobs_per_s: Math.round(opts.jobs / seconds),
    }));
  } finally {
    await worker.stop();
    await queue.close();
    await connection.quit();
  }
}

async function latency(opts) {
  const { IORedis, bullmq } = load(opts.scratch);
  const connection = connect(IORedis, opts.port);
  const queue = new bullmq.Queue(opts.queue, {
    connection, defaultJobOptions: { removeOnComplete: true, removeOnFail: true },
  });
  await queue.waitUntilReady();
  const worker = startWorker(opts, 'worker-latency');
  try {
    await worker.next('ready', 30000);
    // A fixed schedule (job i at start + i * interval), so a slow add does not
    // push later jobs back and hide its own delay.
    const start = nowUs();
    for (let i = 0; i < opts.jobs; i++) {
      const due = start + i * opts.intervalMs * 1000;
      const wait = due - nowUs();
      if (wait > 0) await sleep(Math.ceil(wait / 1000));
      await queue.add('noop', { t_us: nowUs() });
    }
    const done = await worker.next('done', opts.timeoutS * 1000);
    const sample = done.latencies.slice(opts.warmup).sort((a, b) => a - b);
    console.log(JSON.stringify({
      system: 'bullmq', bench: 'latency', concurrency: opts.concurrency, jobs: opts.jobs,
      measured: sample.length, interval_ms: opts.intervalMs,
      p50_us: percentile(sample, 50), p99_us: percentile(sample, 99),
      max_us: sample[sample.length - 1],
    }));
  } finally {
    await worker.stop();
    await queue.close();
    await connection.quit();
  }
}

const opts = parseArgs(process.argv.slice(2));
const modes = {
  throughput, latency,
  'worker-throughput': runWorker, 'worker-latency': runWorker,
};
if (!modes[opts.mode]) {
  console.error('usage: bullmq.mjs throughput|latency --scratch DIR --port P [--concurrency N] [--jobs J]');
  process.exit(2);
}
modes[opts.mode](opts).catch((err) => {
  console.error(`bullmq.mjs ${opts.mode}: ${err.stack || err}`);
  process.exit(1);
});
