// The machine-agent benchmark: kiln's agent, PM2 and supervisord, each
// supervising the same N copies of bench_respawn_probe. bench/agent.sh
// installs the tools and calls this; it prints one JSON object on stdout
// (progress on stderr) and stops every process it started, on every exit.
//
//   node harness.mjs --kiln BIN --probe BIN --pm2 DIR --supervisord BIN
//                    --supervisorctl BIN --redis URL --work DIR
//                    [--services 50] [--starts 3] [--kills 30] [--idle-s 60]
//                    [--floor BIN]   (bench_respawn_floor: the machine's own respawn floor)
//                    [--only kiln,floor]
//
// 1. start: from launching the supervisor until it reports all N services
//    running, each through what it says itself, read without asking it
//    anything (a status request costs the supervisor work while it
//    starts): kiln: its log's "machine ID ready" line; PM2: its event bus,
//    the 'online' events behind `pm2 jlist`; supervisord: its log's
//    "entered RUNNING state" lines. Logs are read every 5 ms. Each is then
//    confirmed by its status command (GET /services, `pm2 jlist`,
//    `supervisorctl status`). The median of
//    --starts runs, each from a fresh state folder / PM2_HOME. The probes'
//    own start records give the last process's start as a cross-check.
// 2. respawn: SIGKILL of one service's process (a different service each
//    time, so no restart throttle sees repeated failures) to the start of
//    its replacement, as the replacement recorded it (CLOCK_MONOTONIC, the
//    clock of process.hrtime), so no polling enters the figure.
// 3./4. all three supervisors at once, each with its N services, idle for
//    --idle-s seconds: CPU from /proc/PID/stat (utime+stime) and from
//    /proc/PID/schedstat (ns on CPU), PSS from /proc/PID/smaps_rollup.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['kiln', 'probe', 'pm2', 'supervisord', 'supervisorctl', 'redis', 'work'])
  if (!args[k]) throw new Error(`harness: --${k} is required`);
for (const k of ['kiln', 'probe', 'pm2']) args[k] = path.resolve(args[k]);
if (args.floor) args.floor = path.resolve(args.floor);
const N = Number(args.services ?? 50);
const STARTS = Number(args.starts ?? 3);
const KILLS = Math.min(Number(args.kills ?? 30), N);
const IDLE_S = Number(args['idle-s'] ?? 60);
const POLL_MS = 5;
const START_TIMEOUT_MS = 60000;
const RESPAWN_TIMEOUT_MS = 10000;
const WORK = path.resolve(args.work);
const NAMES = Array.from({ length: N }, (_, i) => `s${String(i + 1).padStart(2, '0')}`);
const PM2_BIN = path.join(args.pm2, 'bin', 'pm2');
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK']).stdout.toString().trim()) || 100;

const log = (...a) => process.stderr.write(`bench agent: ${a.join(' ')}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => process.hrtime.bigint();
const msSince = (t0, t1 = now()) => Number(t1 - t0) / 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : null;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : null;
};

// Every process this harness owns, for the cleanup on any exit.
const live = new Set();

function readStarts(file) {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [pid, mono] = l.split(' ');
      return { pid: Number(pid), mono: BigInt(mono) };
    });
}

function spawnLogged(cmd, argv, opts, logFile) {
  const out = fs.openSync(logFile, 'a');
  const child = spawn(cmd, argv, { ...opts, stdio: ['ignore', out, out] });
  fs.closeSync(out);
  child.exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  child.on('error', (e) => {
    child.failed = e;
    log(`${cmd}: ${e.message}`);
  });
  return child;
}

// Why child is gone (with the tail of its log), or null while it runs.
function exitNote(child, logFile) {
  if (!child.failed && child.exitCode === null && child.signalCode === null) return null;
  let tail = '';
  try {
    tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
  } catch {}
  const why = child.failed ? child.failed.message : `exited ${child.exitCode ?? child.signalCode}`;
  return `${why}; its log ends:\n${tail}`;
}

async function waitExit(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return Promise.race([child.exited.then(() => true), sleep(ms).then(() => false)]);
}

// ---- kiln ---------------------------------------------------------------------

function kilnSystem(run) {
  const dir = path.join(WORK, `kiln-${run}`);
  const startsDir = path.join(dir, 'starts');
  fs.mkdirSync(startsDir, { recursive: true });
  const cfg = path.join(dir, 'kiln.yaml');
  const lines = [
    `redis: {url: "${args.redis}"}`,
    `machine: {id: bench-kiln-${run}, type: api}`,
    'worker: {connectors: []}',
    'services:',
  ];
  for (const n of NAMES)
    lines.push(`  ${n}: {command: ["${args.probe}", --out, "${path.join(startsDir, n)}"], backoff_ms: 0}`);
  fs.writeFileSync(cfg, lines.join('\n') + '\n');
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^(KILN_|MACHINE_|WORKER_CONNECTORS$|HUB_REDIS_URL$)/.test(k)) delete env[k];
  const stateDir = path.join(dir, 'state');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const logFile = path.join(dir, 'agent.log');
  const readyLine = `"msg":"machine bench-kiln-${run} ready"`;
  let child, port, ready = false;

  const get = (p) =>
    new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: p, agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body)) : reject(new Error(`HTTP ${res.statusCode}`))));
      });
      req.on('error', reject);
    });

  return {
    name: 'kiln',
    startsDir,
    launch() {
      const t0 = now();
      child = spawnLogged(args.kiln, ['machine', 'run', '--config', cfg, '--state-dir', stateDir, '--api', '127.0.0.1:0'],
        { env, cwd: dir }, logFile);
      live.add(this);
      return t0;
    },
    // The agent logs "machine ID ready" in the loop turn in which its last
    // service reached running: read its log every 5 ms. (Polling GET
    // /services instead would cost the agent a /proc sweep per request,
    // slowing what is measured.)
    async running() {
      if (!ready) {
        try {
          ready = fs.readFileSync(logFile, 'utf8').includes(readyLine);
        } catch {}
      }
      return ready ? N : 0;
    },
    // GET /services once it said so: all N must be running.
    async confirm() {
      // The API may start listening just after the services are up.
      for (let i = 0; !port && i < 1000; i++) {
        try {
          port = Number(fs.readFileSync(path.join(stateDir, 'api.port'), 'utf8').trim()) || undefined;
        } catch {}
        if (!port) await sleep(POLL_MS);
      }
      const doc = await get('/services');
      return (Array.isArray(doc) ? doc : doc.services).filter((s) => s.state === 'running').length;
    },
    pid: () => child.pid,
    failed: () => exitNote(child, path.join(dir, 'agent.log')),
    async stop() {
      live.delete(this);
      agent.destroy();
      if (!child) return;
      child.kill('SIGTERM');
      if (!(await waitExit(child, 20000))) {
        log('kiln agent did not stop in 20 s; SIGKILL');
        child.kill('SIGKILL');
        await waitExit(child, 5000);
      }
    },
  };
}

// ---- PM2 ----------------------------------------------------------------------

function pm2System(run) {
  const dir = path.join(WORK, `pm2-${run}`);
  const startsDir = path.join(dir, 'starts');
  const home = path.join(dir, 'home');
  fs.mkdirSync(startsDir, { recursive: true });
  fs.mkdirSync(home, { recursive: true });
  const eco = path.join(dir, 'ecosystem.config.js');
  const apps = NAMES.map((n) => ({
    name: n,
    script: args.probe,
    args: ['--out', path.join(startsDir, n)],
    interpreter: 'none',
    exec_mode: 'fork',
    autorestart: true,
    restart_delay: 0,
  }));
  fs.writeFileSync(eco, `module.exports = ${JSON.stringify({ apps }, null, 2)};\n`);
  const env = { ...process.env, PM2_HOME: home };
  const require = createRequire(path.join(args.pm2, 'package.json'));
  const axon = require('./modules/pm2-axon');
  const online = new Set();
  let cli, sub, subConnecting = false;

  const pm2 = (...a) => spawnSync(process.execPath, [PM2_BIN, ...a], { env, encoding: 'utf8', timeout: 60000 });

  return {
    name: 'pm2',
    startsDir,
    launch() {
      const t0 = now();
      cli = spawnLogged(process.execPath, [PM2_BIN, 'start', eco], { env, cwd: dir }, path.join(dir, 'cli.log'));
      live.add(this);
      return t0;
    },
    async running() {
      // Subscribe to the daemon's event bus as soon as its socket exists;
      // the apps are started by the CLI only after it has reached the
      // daemon, well after the socket appears.
      if (!sub && !subConnecting && fs.existsSync(path.join(home, 'pub.sock'))) {
        subConnecting = true;
        sub = axon.socket('sub-emitter');
        sub.on('process:event', (d) => {
          if (d && d.event === 'online' && d.process) online.add(d.process.name);
        });
        sub.connect(path.join(home, 'pub.sock'));
      }
      return online.size;
    },
    // `pm2 jlist`, once the bus said all are online: the same status.
    confirm() {
      const r = pm2('jlist');
      try {
        return JSON.parse(r.stdout.slice(r.stdout.indexOf('['))).filter((p) => p.pm2_env.status === 'online').length;
      } catch {
        return -1;
      }
    },
    closeBus() {
      if (sub) sub.close();
    },
    pid: () => Number(fs.readFileSync(path.join(home, 'pm2.pid'), 'utf8').trim()),
    failed: () => (cli.failed || (cli.exitCode !== null && cli.exitCode !== 0) ? exitNote(cli, path.join(dir, 'cli.log')) : null),
    async stop() {
      live.delete(this);
      this.closeBus();
      if (cli) await waitExit(cli, 30000);
      const r = pm2('kill');
      if (r.status !== 0) log(`pm2 kill exited ${r.status}: ${r.stderr}`);
    },
  };
}

// ---- supervisord --------------------------------------------------------------

function supervisordSystem(run) {
  const dir = path.join(WORK, `supervisord-${run}`);
  const startsDir = path.join(dir, 'starts');
  fs.mkdirSync(startsDir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'logs'), { recursive: true });
  const conf = path.join(dir, 'supervisord.conf');
  const logFile = path.join(dir, 'supervisord.log');
  const text = [
    '[unix_http_server]',
    `file=${dir}/supervisor.sock`,
    '[supervisord]',
    `logfile=${logFile}`,
    `pidfile=${dir}/supervisord.pid`,
    `childlogdir=${dir}/logs`,
    'loglevel=info',
    'nodaemon=true',
    '[rpcinterface:supervisor]',
    'supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface',
    '[supervisorctl]',
    `serverurl=unix://${dir}/supervisor.sock`,
  ];
  for (const n of NAMES)
    text.push(`[program:${n}]`, `command=${args.probe} --out ${path.join(startsDir, n)}`, 'startsecs=0', 'autorestart=true');
  fs.writeFileSync(conf, text.join('\n') + '\n');
  let child, offset = 0;
  const seen = new Set();
  const ctl = (...a) => spawnSync(args.supervisorctl, ['-c', conf, ...a], { encoding: 'utf8', timeout: 60000 });

  return {
    name: 'supervisord',
    startsDir,
    launch() {
      const t0 = now();
      child = spawnLogged(args.supervisord, ['-c', conf], { cwd: dir }, path.join(dir, 'stdout.log'));
      live.add(this);
      return t0;
    },
    async running() {
      let fd;
      try {
        fd = fs.openSync(logFile, 'r');
      } catch {
        return 0;
      }
      const size = fs.fstatSync(fd).size;
      if (size > offset) {
        const buf = Buffer.alloc(size - offset);
        fs.readSync(fd, buf, 0, buf.length, offset);
        const text = buf.toString('utf8');
        const end = text.lastIndexOf('\n') + 1; // whole lines only
        offset += Buffer.byteLength(text.slice(0, end));
        for (const m of text.slice(0, end).matchAll(/success: (\S+) entered RUNNING state/g)) seen.add(m[1]);
      }
      fs.closeSync(fd);
      return seen.size;
    },
    confirm() {
      return (ctl('status').stdout.match(/\sRUNNING\s/g) || []).length;
    },
    pid: () => child.pid,
    failed: () => exitNote(child, path.join(dir, 'stdout.log')),
    async stop() {
      live.delete(this);
      if (!child) return;
      const r = ctl('shutdown');
      if (r.status !== 0) child.kill('SIGTERM');
      if (!(await waitExit(child, 30000))) {
        log('supervisord did not stop in 30 s; SIGKILL');
        child.kill('SIGKILL');
        await waitExit(child, 5000);
      }
    },
  };
}

// ---- the floor ------------------------------------------------------------------

// bench_respawn_floor: a blocking waitpid and posix_spawn, nothing else, so
// its respawn is what the machine itself costs (bench/respawn_floor.c).
// Measured for respawn only (and start, as a by-product); it stays out of
// the idle window, where it would only sleep in waitpid.
function floorSystem(run) {
  const dir = path.join(WORK, `floor-${run}`);
  const startsDir = path.join(dir, 'starts');
  fs.mkdirSync(startsDir, { recursive: true });
  const logFile = path.join(dir, 'floor.log');
  let child;
  return {
    name: 'floor',
    startsDir,
    respawnOnly: true,
    launch() {
      const t0 = now();
      child = spawnLogged(args.floor, ['--probe', args.probe, '--dir', startsDir, ...NAMES], { cwd: dir }, logFile);
      live.add(this);
      return t0;
    },
    async running() {
      const m = /running (\d+)/.exec(fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '');
      return m ? Number(m[1]) : 0;
    },
    pid: () => child.pid,
    failed: () => exitNote(child, logFile),
    async stop() {
      live.delete(this);
      if (!child) return;
      child.kill('SIGTERM');
      if (!(await waitExit(child, 10000))) {
        child.kill('SIGKILL');
        await waitExit(child, 5000);
      }
    },
  };
}

// ---- measures -----------------------------------------------------------------

async function measureStart(sys) {
  const t0 = sys.launch();
  for (;;) {
    const n = await sys.running();
    if (n >= N) break;
    if (sys.failed()) throw new Error(`${sys.name}: ${sys.failed()}`);
    if (msSince(t0) > START_TIMEOUT_MS) throw new Error(`${sys.name}: only ${n} of ${N} services running after ${START_TIMEOUT_MS} ms`);
    await sleep(POLL_MS);
  }
  const reportedMs = msSince(t0);
  if (sys.confirm) {
    const n = await sys.confirm();
    if (n !== N) throw new Error(`${sys.name}: reported ${N} running, but its status command counts ${n}`);
  }
  if (sys.closeBus) sys.closeBus();
  // The last service process to start, as the probes recorded it.
  let first = null, last = 0n;
  for (const n of NAMES) {
    // A supervisor may count a service running once it has exec'd, a
    // moment before the probe's main has written its record.
    let s = readStarts(path.join(sys.startsDir, n));
    for (const t = now(); !s.length && msSince(t) < 2000; s = readStarts(path.join(sys.startsDir, n))) await sleep(POLL_MS);
    if (!s.length) throw new Error(`${sys.name}: service ${n} has no start record`);
    if (s[0].mono > last) last = s[0].mono;
    if (first === null || s[0].mono < first) first = s[0].mono;
  }
  return { reported_ms: reportedMs, first_process_ms: msSince(t0, first), last_process_ms: msSince(t0, last) };
}

// One respawn of service i: SIGKILL of its process to the start its
// replacement recorded itself, both on CLOCK_MONOTONIC.
async function respawnOnce(sys, i) {
  const file = path.join(sys.startsDir, NAMES[i]);
  const before = readStarts(file);
  const victim = before[before.length - 1].pid;
  if (!fs.existsSync(`/proc/${victim}`)) throw new Error(`${sys.name}: ${NAMES[i]} (pid ${victim}) is not running`);
  const tKill = now();
  process.kill(victim, 'SIGKILL');
  let after;
  for (;;) {
    after = readStarts(file);
    if (after.length > before.length) break;
    if (msSince(tKill) > RESPAWN_TIMEOUT_MS) throw new Error(`${sys.name}: ${NAMES[i]} not respawned ${RESPAWN_TIMEOUT_MS} ms after SIGKILL`);
    await sleep(1);
  }
  return Number(after[before.length].mono - tKill) / 1e6;
}

// KILLS respawns of every system, interleaved: round i kills service i of
// each system in turn (the order rotating from round to round), so other
// work on a shared machine falls on all of them alike rather than on
// whichever was measured while it ran. The pause after each lets the
// supervisor's follow-up work (logs, status) end before the next kill.
async function measureRespawns(systems) {
  const samples = systems.map(() => []);
  for (let i = 0; i < KILLS; i++) {
    for (let k = 0; k < systems.length; k++) {
      const j = (i + k) % systems.length;
      samples[j].push(await respawnOnce(systems[j], i));
      await sleep(50);
    }
  }
  return samples.map((s) => ({
    kills: s.length,
    median_ms: median(s),
    p90_ms: pct(s, 90),
    min_ms: Math.min(...s),
    max_ms: Math.max(...s),
  }));
}

function cpuTicks(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
}
const cpuNs = (pid) => Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
const pssKiB = (pid) => Number(/^Pss:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))[1]);
const rssKiB = (pid) => Number(/^VmRSS:\s+(\d+) kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

async function measureIdle(systems) {
  const pids = systems.map((s) => s.pid());
  const t0 = now();
  const ticks0 = pids.map(cpuTicks);
  const ns0 = pids.map(cpuNs);
  await sleep(IDLE_S * 1000);
  const wallS = msSince(t0) / 1000;
  return systems.map((s, i) => ({
    system: s.name,
    pid: pids[i],
    wall_s: wallS,
    cpu_pct: ((cpuTicks(pids[i]) - ticks0[i]) / CLK_TCK / wallS) * 100,
    cpu_pct_schedstat: ((cpuNs(pids[i]) - ns0[i]) / 1e9 / wallS) * 100,
    pss_mib: pssKiB(pids[i]) / 1024,
    rss_mib: rssKiB(pids[i]) / 1024,
  }));
}

// ---- run ----------------------------------------------------------------------

const makers = { kiln: kilnSystem, pm2: pm2System, supervisord: supervisordSystem };
if (args.floor) makers.floor = floorSystem;
// --only kiln,floor: measure just those (while iterating on one of them).
if (args.only) for (const k of Object.keys(makers)) if (!args.only.split(',').includes(k)) delete makers[k];
const results = {
  services: N,
  starts: STARTS,
  kills: KILLS,
  idle_s: IDLE_S,
  poll_ms: POLL_MS,
  clk_tck: CLK_TCK,
  pm2_version: JSON.parse(fs.readFileSync(path.join(args.pm2, 'package.json'), 'utf8')).version,
  supervisord_version: spawnSync(args.supervisord, ['--version'], { encoding: 'utf8' }).stdout.trim(),
  node_version: process.version,
  start: {},
  respawn: {},
  idle: [],
  // The machine may be shared: its load average before, and at the end.
  loadavg_before: fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
};

let stopping = null;
async function stopAll() {
  stopping ??= (async () => {
    for (const s of [...live]) {
      try {
        await s.stop();
      } catch (e) {
        log(`stopping ${s.name}: ${e.message}`);
      }
    }
  })();
  return stopping;
}
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.on(sig, () => stopAll().then(() => process.exit(130)));

async function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const started = [];
  for (const name of Object.keys(makers)) {
    const runs = [];
    let sys;
    for (let run = 1; run <= STARTS; run++) {
      sys = makers[name](run);
      runs.push(await measureStart(sys));
      log(`${name} start ${run}/${STARTS}: ${runs.at(-1).reported_ms.toFixed(1)} ms to ${N} running ` +
          `(processes started from ${runs.at(-1).first_process_ms.toFixed(1)} to ${runs.at(-1).last_process_ms.toFixed(1)} ms)`);
      if (run < STARTS) await sys.stop();
    }
    results.start[name] = {
      runs,
      median_ms: median(runs.map((r) => r.reported_ms)),
      first_process_median_ms: median(runs.map((r) => r.first_process_ms)),
      last_process_median_ms: median(runs.map((r) => r.last_process_ms)),
    };
    started.push(sys);
  }
  await sleep(1000); // let the starts settle before killing
  const respawns = await measureRespawns(started);
  const kept = [];
  for (const [k, sys] of started.entries()) {
    results.respawn[sys.name] = respawns[k];
    log(`${sys.name} respawn: median ${respawns[k].median_ms.toFixed(2)} ms over ${KILLS} kills (interleaved)`);
    if (sys.respawnOnly) await sys.stop();
    else kept.push(sys);
  }
  if (args.only) { // iterating: no idle window
    results.loadavg_after = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
    return;
  }
  await sleep(5000);
  log(`idle: ${kept.length} supervisors with ${N} services each, ${IDLE_S} s`);
  results.idle = await measureIdle(kept);
  results.loadavg_after = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  for (const r of results.idle)
    log(`${r.system}: cpu ${r.cpu_pct.toFixed(3)} % (schedstat ${r.cpu_pct_schedstat.toFixed(4)} %), pss ${r.pss_mib.toFixed(1)} MiB`);
}

try {
  await main();
  await stopAll();
  process.stdout.write(JSON.stringify(results) + '\n');
} catch (e) {
  log(e.stack || e.message);
  await stopAll();
  process.exit(1);
}
