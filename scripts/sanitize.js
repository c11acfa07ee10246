#!/usr/bin/env node
// Builds the addon with a sanitizer and runs tests against it.
//
//   node scripts/sanitize.js [address|thread] [test paths…]
//
// address: AddressSanitizer + UndefinedBehaviorSanitizer. thread: ThreadSanitizer
// (see docs/native.md: it cannot run under an uninstrumented node; this says why).
// Default tests: test/native, test/fault, test/daemon. Compile dist/ first (the
// npm scripts do).
//
// Node itself is not instrumented, so:
// - the build goes to build-sanitize/<kind>/ (its binding.gyp and native/ are
//   symlinks to the package's), built with `node-gyp --sanitize=<kind>`, and the
//   tests load it through DAXMAP_ADDON_DIR (lib/native/addon.ts);
// - the sanitizer runtimes are LD_PRELOADed, since they must come before anything
//   that allocates;
// - every variable is in the environment, so test workers and every child process
//   (clients, daemons, fixtures) run the same build under the same runtime;
// - reports go to files in a fresh log directory (log_path), one per process, and
//   the run fails if any report was written, whatever the tests said: a child
//   whose death a test expects would otherwise hide one.
'use strict';
const { spawnSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const KINDS = ['address', 'thread'];
const DEFAULT_TESTS = ['test/native', 'test/fault', 'test/daemon'];

function fail(msg) {
  console.error(`sanitize: ${msg}`);
  process.exit(2);
}

function run(cmd, args, opts) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.error) fail(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with ${r.status ?? r.signal}`);
}

const args = process.argv.slice(2);
const kind = KINDS.includes(args[0]) ? args.shift() : 'address';
// A directory stands for its test files (*.test.ts, fixtures left out), as `npm test`
// picks them (.taprc): given a directory, tap would also run every other .ts file in
// it, helpers and the children tests spawn (one of which waits to be killed).
function testFiles(p) {
  const abs = path.resolve(ROOT, p);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) return [p];
  const out = [];
  const walk = (d) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const f = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== 'fixtures' && e.name !== 'node_modules') walk(f);
      } else if (e.name.endsWith('.test.ts')) {
        out.push(path.relative(ROOT, f));
      }
    }
  };
  walk(abs);
  return out;
}
const tests = (args.length > 0 ? args : DEFAULT_TESTS).flatMap(testFiles);
const cxx = process.env.CXX || 'g++';
const dir = path.join(ROOT, 'build-sanitize', kind);

// The sanitizer runtimes of the compiler that builds the addon.
function runtime(name) {
  const r = spawnSync(cxx, [`-print-file-name=${name}`], { encoding: 'utf8' });
  const p = (r.stdout || '').trim();
  if (r.status !== 0 || !path.isAbsolute(p) || !fs.existsSync(p)) fail(`${cxx} has no ${name}: install its sanitizer runtime`);
  return fs.realpathSync(p);
}
const preload = kind === 'address' ? [runtime('libasan.so'), runtime('libubsan.so')] : [runtime('libtsan.so')];

// Build (incrementally: configure only when binding.gyp changed).
fs.mkdirSync(dir, { recursive: true });
for (const [link, target] of [['binding.gyp', '../../binding.gyp'], ['native', '../../native']]) {
  const p = path.join(dir, link);
  let now = null;
  try {
    now = fs.readlinkSync(p);
  } catch {
    // absent (or not a link): made below
  }
  if (now !== target) {
    fs.rmSync(p, { force: true });
    fs.symlinkSync(target, p);
  }
}
const nodeGyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] });
const makefile = path.join(dir, 'build', 'Makefile');
const buildEnv = { ...process.env };
delete buildEnv.LD_PRELOAD;
if (!fs.existsSync(makefile) || fs.statSync(makefile).mtimeMs < fs.statSync(path.join(ROOT, 'binding.gyp')).mtimeMs) {
  run(process.execPath, [nodeGyp, 'configure', `--sanitize=${kind}`], { cwd: dir, env: buildEnv });
}
run(process.execPath, [nodeGyp, 'build', '-j', String(os.availableParallelism())], { cwd: dir, env: buildEnv });

// The run's environment.
const logDir = fs.mkdtempSync(path.join(os.tmpdir(), `daxmap-${kind}-`));
fs.chmodSync(logDir, 0o1777);  // tests drop some children to another user
const toolDir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-sanitize-tools-'));
fs.chmodSync(toolDir, 0o755);
if (kind === 'address') {
  // GCC's UBSan runtime is a library of its own (libubsan) beside ASan's; loaded
  // together, it reports as ASan's plugin and ignores UBSAN_OPTIONS' log_path,
  // writing to stderr, where a report from a child process would be lost. This
  // preloaded shim hands libubsan its report path at start-up.
  const shimSrc = path.join(toolDir, 'ubsan-log.c');
  fs.writeFileSync(shimSrc, [
    '#define _GNU_SOURCE',
    '#include <dlfcn.h>',
    '#include <stdlib.h>',
    '__attribute__((constructor)) static void daxmap_ubsan_log(void) {',
    '  const char* p = getenv("DAXMAP_UBSAN_LOG");',
    `  void* h = dlopen(${JSON.stringify(preload[1])}, RTLD_LAZY | RTLD_NOLOAD);  /* the preloaded libubsan */`,
    '  if (p == NULL || h == NULL) return;',
    '  void (*set)(const char*) = (void (*)(const char*))dlsym(h, "__sanitizer_set_report_path");',
    '  if (set != NULL) set(p);',
    '}',
    '',
  ].join('\n'));
  const cc = process.env.CC || 'gcc';
  run(cc, ['-shared', '-fPIC', '-O1', shimSrc, '-o', path.join(toolDir, 'ubsan-log.so'), '-ldl']);
  preload.push(path.join(toolDir, 'ubsan-log.so'));
}
// Deadly signals are behaviour under test here (a poisoned page is SIGBUS, a
// closed region SIGSEGV, like the kernel's): the runtimes must leave them alone.
const noSignals = 'handle_segv=0:handle_sigbus=0:handle_abort=0:handle_sigill=0:handle_sigfpe=0';
const env = {
  ...process.env,
  DAXMAP_ADDON_DIR: dir,
  LD_PRELOAD: [...preload, ...(process.env.LD_PRELOAD ? [process.env.LD_PRELOAD] : [])].join(':'),
};
if (kind === 'address') {
  // V8 leaks by design; a smaller quarantine keeps dozens of node processes in memory.
  env.ASAN_OPTIONS = `detect_leaks=0:quarantine_size_mb=64:${noSignals}:log_path=${logDir}/asan`;
  env.UBSAN_OPTIONS = `halt_on_error=1:print_stacktrace=1:${noSignals}:log_path=${logDir}/ubsan`;
  env.DAXMAP_UBSAN_LOG = `${logDir}/ubsan`;
} else {
  env.TSAN_OPTIONS = `halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:${noSignals}:log_path=${logDir}/tsan`;
}

function reports() {
  return fs.readdirSync(logDir).map((f) => path.join(logDir, f)).filter((f) => fs.statSync(f).size > 0);
}

function finish(code) {
  fs.rmSync(toolDir, { recursive: true, force: true });
  const found = reports();
  for (const f of found) {
    console.error(`\n==== sanitizer report ${path.basename(f)} ====`);
    console.error(fs.readFileSync(f, 'utf8'));
  }
  if (found.length > 0) {
    console.error(`sanitize: ${found.length} sanitizer report(s) (kept in ${logDir}): FAIL`);
    process.exit(1);
  }
  fs.rmSync(logDir, { recursive: true, force: true });
  console.error(`sanitize (${kind}): no sanitizer reports; tests ${code === 0 ? 'passed' : 'FAILED'}`);
  process.exit(code);
}

// Preflight 1: each runtime's reports land where finish() looks. A small program
// built with the addon's flags makes one deliberate error per runtime; each must
// leave a report.
const canarySrc = path.join(toolDir, 'canary.cc');
const canaryBin = path.join(toolDir, 'canary');
fs.writeFileSync(canarySrc, [
  '#include <thread>',
  'int shared;',
  'int main(int argc, char** argv) {',
  "  if (argv[1][0] == 'a') { int* p = new int[4]; int v = p[argc + 2]; delete[] p; return v; }  // heap overflow",
  "  if (argv[1][0] == 'u') { int big = 2147483647; big += argc; return big; }                  // signed overflow",
  '  std::thread t([] { shared++; }); shared++; t.join(); return 0;                              // data race',
  '}',
  '',
].join('\n'));
const canaryFlags = kind === 'address' ? ['-fsanitize=address,undefined,float-cast-overflow,float-divide-by-zero', '-fno-sanitize-recover=all'] : ['-fsanitize=thread'];
run(cxx, [...canaryFlags, '-g', '-O0', '-pthread', canarySrc, '-o', canaryBin]);
for (const mode of kind === 'address' ? ['asan', 'ubsan'] : ['tsan']) {
  spawnSync(canaryBin, [mode], { env, stdio: 'ignore' });
  const got = reports();
  if (got.length !== 1 || !path.basename(got[0]).startsWith(mode)) {
    fail(`the canary's deliberate ${mode} error left ${JSON.stringify(got)} in ${logDir}: reports would go unseen`);
  }
  fs.rmSync(got[0]);
}
fs.rmSync(canarySrc);
fs.rmSync(canaryBin);

// Preflight 2: a node process with this environment maps the sanitizer build and
// its runtime (the loader honours DAXMAP_ADDON_DIR).
const probe = spawnSync(process.execPath, ['-e', `
  require(${JSON.stringify(path.join(ROOT, 'dist/native/addon'))}).native();
  const maps = require('node:fs').readFileSync('/proc/self/maps', 'utf8');
  process.stdout.write(JSON.stringify({ addon: maps.includes(${JSON.stringify(path.join(dir, 'build/Release/daxmap.node'))}),
    runtime: maps.includes(${JSON.stringify(path.basename(preload[0]))}) }));
`], { env, encoding: 'utf8' });
let mapped = {};
try {
  mapped = JSON.parse(probe.stdout);
} catch {
  console.error(probe.stderr);
}
if (!mapped.addon || !mapped.runtime) {
  console.error(probe.stderr);
  if (reports().length > 0) finish(1);
  fail(`a node process did not load the ${kind} build with its runtime: ${JSON.stringify(mapped)}`);
}

// The tests. The sanitized build is slower: a longer per-file timeout; no coverage.
const tapBin = path.join(path.dirname(require.resolve('tap/package.json', { paths: [ROOT] })), 'dist/esm/run.mjs');
console.error(`sanitize (${kind}): running ${tests.length} test files (${(args.length > 0 ? args : DEFAULT_TESTS).join(' ')}) with ${dir}, reports to ${logDir}`);
const child = spawn(process.execPath, [tapBin, '--disable-coverage', '--timeout=600', ...tests], { cwd: ROOT, env, stdio: 'inherit' });
child.on('exit', (code, signal) => finish(code ?? (signal ? 1 : 0)));
