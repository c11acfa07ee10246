// The package as a user gets it: `npm pack` (its prepack compiles the TypeScript and
// the N-API prebuild), then the tarball installed into a fresh app with no compiler
// reachable (CC=false, CXX=false, a PATH holding only node and npm), so the install
// step (node-gyp-build) must take the prebuild. The app imports the package as ESM
// and as CommonJS, maps a file on a tmpfs pool, stores and loads, and runs the CLIs.
// The pack runs in a staged copy of the package: its prebuildify rebuilds build/,
// which the other tests running meanwhile load from the checkout.
import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

// The pack compiles the addon (about 40 s on an idle 2-core machine); on a loaded
// one that alone can pass the suite's per-file limit.
t.setTimeout(600_000);

const root = resolve(__dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'daxmap-pack-'));
const shm = `/dev/shm/daxmap-pack-${process.pid}`;
t.teardown(() => {
  rmSync(dir, { recursive: true, force: true });
  for (const s of ['esm', 'cjs', 'cli']) rmSync(`${shm}-${s}`, { force: true });
});

/** The environment without the outer npm's and tap's settings (they name this checkout), nor a sanitizer build. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(npm_|NODE_OPTIONS$|NODE_V8_COVERAGE$|TAP|_TAP|DAXMAP_ADDON_DIR$|INIT_CWD$)/i.test(k)) continue;
    env[k] = v;
  }
  return { ...env, ...extra };
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', maxBuffer: 64 << 20 });
}

/** Diagnostics for a child that failed: its output, only then. */
function show(r: SpawnSyncReturns<string>): object {
  return r.status === 0 ? {} : { signal: r.signal, stdout: r.stdout.slice(-8000), stderr: r.stderr.slice(-8000) };
}

t.test('the lock file records the package as package.json declares it (a fresh install leaves it unchanged)', async (t) => {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
  const self = lock.packages[''];
  for (const k of ['name', 'version', 'license', 'bin', 'dependencies', 'devDependencies', 'engines', 'os']) t.same(self[k], pkg[k], k);
  t.equal(self.hasInstallScript, true);
  for (const dep of Object.keys({ ...pkg.dependencies, ...pkg.devDependencies })) t.ok(lock.packages[`node_modules/${dep}`], `${dep} locked`);
});

t.test('pack, install with no compiler, import, map, CLI', async (t) => {
  // Stage the package's sources; node_modules is the checkout's (the dev tools).
  const stage = join(dir, 'stage');
  mkdirSync(stage);
  for (const f of ['package.json', 'package-lock.json', 'binding.gyp', 'tsconfig.json', 'README.md', 'bin', 'lib', 'native', 'docs']) {
    cpSync(join(root, f), join(stage, f), { recursive: true });
  }
  symlinkSync(join(root, 'node_modules'), join(stage, 'node_modules'));
  const out = join(dir, 'out');
  mkdirSync(out);
  const pack = run('npm', ['pack', '--json', '--pack-destination', out], stage, cleanEnv({ JOBS: 'max' }));
  t.equal(pack.status, 0, 'pack exits 0', show(pack));
  // The prepack's compiler output comes first on stdout; npm's JSON report last.
  const [info] = JSON.parse(pack.stdout.slice(pack.stdout.search(/^\[$/m))) as { filename: string; files: { path: string }[] }[];
  const files = info!.files.map((f) => f.path);
  t.ok(files.includes('prebuilds/linux-x64/daxmap.node'), 'the tarball carries the linux-x64 prebuild');
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts'), 'the compiled library');
  t.ok(files.includes('bin/daxmap') && files.includes('bin/daxmapd'), 'the CLIs');
  t.ok(files.includes('binding.gyp') && files.includes('native/binding/addon.cc'), 'the sources, to compile where no prebuild fits');
  t.same(files.filter((f) => /^(test|\.ci|scripts|lib|build)\/|^\.taprc$|^\.gitignore$|^tsconfig/.test(f)), [], 'no tests, CI, tap config, TS sources or build directory');

  // A PATH with every command of this one but compilers, linkers, make and python
  // (node-gyp needs them all); node first.
  const shim = join(dir, 'shim');
  mkdirSync(shim);
  symlinkSync(process.execPath, join(shim, 'node'));
  const toolchain = /^(cc|c\+\+|cpp|gcc|g\+\+|clang.*|ld(\..*)?|as|make|gmake|cmake|python.*|node-gyp|.*-(gcc|g\+\+|cc|c\+\+|ld|as)(-[0-9.]+)?|(gcc|g\+\+|cpp)-[0-9.]+)$/;
  for (const d of (process.env.PATH ?? '').split(':')) {
    if (!d || d.includes('node_modules') || !existsSync(d)) continue; // not this checkout's tools
    for (const name of readdirSync(d)) {
      if (toolchain.test(name) || existsSync(join(shim, name))) continue;
      symlinkSync(join(d, name), join(shim, name));
    }
  }
  const noCompiler = cleanEnv({ PATH: shim, CC: 'false', CXX: 'false', npm_config_prefer_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false' });
  const which = run('/bin/sh', ['-c', 'command -v g++ || command -v c++ || command -v cc || command -v gcc || command -v make || command -v python3 || echo none'], dir, noCompiler);
  t.equal(which.stdout.trim(), 'none', 'no compiler on the PATH');

  const app = join(dir, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const inst = run(join(shim, 'npm'), ['install', join(out, info!.filename)], app, noCompiler);
  t.equal(inst.status, 0, 'inst exits 0', show(inst));
  const pkgDir = join(app, 'node_modules', 'daxmap');
  t.notOk(existsSync(join(pkgDir, 'build')), 'nothing was compiled: the prebuild was taken');
  t.same(readdirSync(join(pkgDir, 'prebuilds')), ['linux-x64']);

  const use = (pool: string, name: string): string => `
    const pool = await Pool.create(${JSON.stringify(pool)}, { size: 16 << 20 });
    const f = await pool.openFile(${JSON.stringify(name)}, { create: true });
    await f.truncate(1 << 20);
    const m = await f.map();
    m.store(Buffer.from('hello ${name}'), 4096);
    m.buffer[0] = 42;
    const back = m.load(4096, ${6 + name.length}).toString() + ' ' + m.buffer[0];
    await m.unmap();
    const st = await pool.stats();
    await f.close();
    await pool.close();
    console.log(back + ' faults ' + st.faults);`;
  writeFileSync(join(app, 'esm.mjs'), `import { Pool } from 'daxmap';\n${use(`${shm}-esm`, 'esm')}\n`);
  writeFileSync(join(app, 'cjs.cjs'), `const { Pool } = require('daxmap');\n(async () => {${use(`${shm}-cjs`, 'cjs')}\n})().catch((e) => { console.error(e); process.exit(1); });\n`);
  for (const [file, name] of [['esm.mjs', 'esm'], ['cjs.cjs', 'cjs']] as const) {
    const r = run(join(shim, 'node'), [file], app, noCompiler);
    t.equal(r.status, 0, `${file} exits 0`, show(r));
    t.match(r.stdout, new RegExp(`^hello ${name} 42 faults [1-9]`), `${file} stored and loaded through a mapping`);
  }

  const help = run(join(app, 'node_modules/.bin/daxmap'), ['--help'], app, noCompiler);
  t.equal(help.status, 0, 'help exits 0', show(help));
  t.match(help.stdout, /Usage: daxmap <command>/);
  const mkfs = run(join(app, 'node_modules/.bin/daxmap'), ['mkfs', `${shm}-cli`, '--size', '8M'], app, noCompiler);
  t.equal(mkfs.status, 0, 'mkfs exits 0', show(mkfs));
  t.match(mkfs.stdout, /^formatted /);
  const fsck = run(join(app, 'node_modules/.bin/daxmap'), ['fsck', `${shm}-cli`], app, noCompiler);
  t.equal(fsck.status, 0, 'fsck exits 0', show(fsck));
  const dhelp = run(join(app, 'node_modules/.bin/daxmapd'), ['--help'], app, noCompiler);
  t.equal(dhelp.status, 0, 'dhelp exits 0', show(dhelp));
  t.match(dhelp.stdout, /Usage: daxmapd/);
});
