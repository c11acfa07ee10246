// Running part of a test as another user (nobody, or any uid) wherever the checkout
// lives. The checkout may sit in a directory that user cannot even enter (a
// `mktemp -d` folder, a 0700 home), so what the unprivileged side loads is staged in
// a world-readable temporary directory laid out like the checkout: package.json,
// dist/, bin/, the native addon under build/, the packages dist/ requires (and theirs)
// under node_modules/, and whatever fixtures the caller names. A staged fixture finds
// ../../../dist exactly as it does in the checkout.
//
// The unprivileged side also must not inherit the test runner's preloads: tap puts
// its loaders in process.execArgv (which fork() passes on) and in NODE_OPTIONS, and
// they live in the checkout's node_modules (ERR_MODULE_NOT_FOUND as that user).
// Staged scripts are plain JS, so every --import/--require/--loader is dropped. An
// environment without them is not enough: tap's process-info hook rewrites the
// environment of every process spawned from a test (process-on-spawn) to put its
// loader back into NODE_OPTIONS. So node is started through env(1), which sets
// NODE_OPTIONS last, after that hook: see Stage.node().
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { builtinModules } from 'node:module';
import { spawnSync } from 'node:child_process';

export const ROOT = path.resolve(__dirname, '..');
export const NOBODY = 65534;

const PRELOAD = /^(?:--import|--require|-r|--loader|--experimental-loader)(=|$)/;

/** NODE_OPTIONS split as Node splits it: on spaces, with "double quotes" and \ escapes inside them. */
export function splitNodeOptions(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let has = false;
  let quoted = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (quoted && c === '\\' && i + 1 < s.length) {
      cur += s[++i];
    } else if (c === '"') {
      quoted = !quoted;
      has = true;
    } else if (c === ' ' && !quoted) {
      if (has) out.push(cur);
      cur = '';
      has = false;
    } else {
      cur += c;
      has = true;
    }
  }
  if (has) out.push(cur);
  return out;
}

/** Node options without preloads (an option and, in its two-word form, its value). */
export function withoutPreloads(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const m = PRELOAD.exec(args[i]!);
    if (m === null) out.push(args[i]!);
    else if (m[1] === '') i++; // `--import X`: X goes too
  }
  return out;
}

/** An environment for a process run as another user: this one's, less the test runner's preloads. */
const SANITIZER_VARS = ['DAXMAP_ADDON_DIR', 'LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS', 'TSAN_OPTIONS', 'DAXMAP_UBSAN_LOG'];

export function unprivilegedEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) {
    // (These only configure tap's process-info loader, which is gone.)
    if (k.startsWith('_TAPJS_PROCESSINFO_')) continue;
    // A sanitizer run's addon build and runtimes (scripts/sanitize.js) live in the
    // checkout, which the other user may not read: its processes run the staged
    // ordinary addon, unsanitized.
    if (SANITIZER_VARS.includes(k)) continue;
    out[k] = v;
  }
  const opts = withoutPreloads(splitNodeOptions(env.NODE_OPTIONS ?? ''));
  if (opts.length > 0) out.NODE_OPTIONS = opts.map((o) => `"${o.replace(/[\\"]/g, '\\$&')}"`).join(' ');
  else delete out.NODE_OPTIONS;
  return out;
}

/** Packages the compiled library requires at run time: the bare require()s in dist/. */
function distRequires(): Set<string> {
  const names = new Set<string>();
  const builtins = new Set(builtinModules);
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.js')) {
        for (const m of fs.readFileSync(p, 'utf8').matchAll(/\brequire\((['"])([^'"./][^'"]*)\1\)/g)) {
          const spec = m[2]!;
          if (spec.startsWith('node:') || builtins.has(spec)) continue;
          const parts = spec.split('/');
          names.add(spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!);
        }
      }
    }
  };
  walk(path.join(ROOT, 'dist'));
  return names;
}

/** The installed package directories those need, found the way require() finds them. */
function packageClosure(roots: Iterable<string>): string[] {
  const found = new Set<string>();
  const queue: [string, string][] = [...roots].map((n) => [n, ROOT]);
  while (queue.length > 0) {
    const [name, from] = queue.shift()!;
    let dir: string | null = null;
    for (let d = from; ; d = path.dirname(d)) {
      const c = path.join(d, 'node_modules', name);
      if (fs.existsSync(path.join(c, 'package.json'))) {
        dir = c;
        break;
      }
      if (d === ROOT || path.dirname(d) === d) break;
    }
    if (dir === null) {
      // An optional dependency that is not installed is fine; anything else is a broken install.
      if (from === ROOT) throw new Error(`staging: dist/ requires '${name}', which is not installed`);
      continue;
    }
    if (found.has(dir)) continue;
    found.add(dir);
    const pj = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
    for (const dep of Object.keys({ ...pj.dependencies, ...pj.optionalDependencies })) queue.push([dep, dir]);
  }
  return [...found];
}

/** Everyone may read every file and enter every directory under `p` (our copy only). */
function openUp(p: string): void {
  const st = fs.lstatSync(p);
  if (st.isSymbolicLink()) return;
  if (st.isDirectory()) {
    fs.chmodSync(p, 0o755);
    for (const e of fs.readdirSync(p)) openUp(path.join(p, e));
  } else {
    fs.chmodSync(p, (st.mode & 0o777) | 0o444 | (st.mode & 0o100 ? 0o111 : 0));
  }
}

/** Whether others may search every directory from / down to `dir`. */
function searchableByOthers(dir: string): boolean {
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    const st = fs.statSync(d, { throwIfNoEntry: false });
    if (!st || (st.mode & 0o001) === 0) return false;
    if (path.dirname(d) === d) return true;
  }
}

export interface Stage {
  /** The world-readable directory that mirrors the checkout. */
  readonly root: string;
  /** The uid and gid it was checked for. */
  readonly uid: number;
  readonly gid: number;
  /** The staged copy of a path in the checkout (absolute, or relative to the checkout). */
  path(p: string): string;
  /**
   * The command line that runs node with `args` without preloads: env(1) setting
   * NODE_OPTIONS to this process's less the preloads, then node with this process's
   * execArgv less the preloads. Spawn argv[0] with the rest (or put a setpriv before it).
   */
  node(args: string[]): string[];
  /** The environment to run with: this one's, less the test runner's preloads, plus `extra`. */
  env(extra?: NodeJS.ProcessEnv): NodeJS.ProcessEnv;
  /** Options for spawn/spawnSync: the stage's user, environment, and the stage as cwd. */
  spawnOptions(extra?: NodeJS.ProcessEnv): { uid: number; gid: number; cwd: string; env: NodeJS.ProcessEnv };
  remove(): void;
}

/**
 * Stages what a process of `uid`/`gid` needs (see the top of this file) plus the
 * checkout-relative `files`, and checks that such a process can load the library and
 * its addon from there. Returns the stage, removed at `owner`'s teardown, or the
 * reason it cannot work here (the caller skips with it). Needs root to switch users.
 */
export function stageFor(owner: { teardown(fn: () => void): void }, files: string[] = [], ids: { uid: number; gid: number } = { uid: NOBODY, gid: NOBODY }): Stage | string {
  if (process.getuid?.() !== 0) return 'needs root to run processes as another user';
  const bases = [...new Set([os.tmpdir(), '/tmp', '/dev/shm'])];
  const base = bases.find((b) => searchableByOthers(b));
  if (base === undefined) return `no temporary directory that uid ${ids.uid} may enter (tried ${bases.join(', ')})`;
  const root = fs.mkdtempSync(path.join(base, 'daxmap-unpriv-'));
  let removed = false;
  const remove = (): void => {
    if (removed) return;
    removed = true;
    fs.rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', remove); // should the test die before its teardown
  try {
    const copy = (rel: string): void => {
      fs.cpSync(path.join(ROOT, rel), path.join(root, rel), { recursive: true, dereference: true });
    };
    for (const rel of ['package.json', 'dist', 'bin', ...files]) copy(rel);
    for (const rel of ['build/Release', 'build/Debug']) {
      const dir = path.join(ROOT, rel);
      if (!fs.existsSync(dir)) continue;
      for (const f of fs.readdirSync(dir)) if (f.endsWith('.node')) copy(path.join(rel, f));
    }
    if (fs.existsSync(path.join(ROOT, 'prebuilds'))) copy('prebuilds');
    for (const dir of packageClosure(distRequires())) copy(path.relative(ROOT, dir));
    openUp(root);
  } catch (err) {
    remove();
    throw err;
  }
  const execArgv = withoutPreloads(process.execArgv);
  const nodeOptions = unprivilegedEnv().NODE_OPTIONS ?? '';
  const stage: Stage = {
    root,
    uid: ids.uid,
    gid: ids.gid,
    path: (p) => {
      const rel = path.relative(ROOT, path.resolve(ROOT, p));
      if (rel.startsWith('..')) throw new Error(`staging: ${p} is outside the checkout`);
      return path.join(root, rel);
    },
    node: (args) => ['env', `NODE_OPTIONS=${nodeOptions}`, process.execPath, ...execArgv, ...args],
    env: (extra = {}) => ({ ...unprivilegedEnv(), ...extra }),
    spawnOptions: (extra = {}) => ({ uid: ids.uid, gid: ids.gid, cwd: root, env: stage.env(extra) }),
    remove,
  };
  // The check: that user loads the library, its dependencies and the addon from the stage.
  const [cmd, ...argv] = stage.node(['-e', `
    const { native } = require(${JSON.stringify(path.join(root, 'dist/native/addon.js'))});
    require(${JSON.stringify(path.join(root, 'dist/index.js'))});
    for (const p of ${JSON.stringify([...distRequires()])}) require(require.resolve(p, { paths: [${JSON.stringify(path.join(root, 'dist'))}] }));
    if (typeof native().uffdProbe !== 'function') throw new Error('the addon did not load');
    console.log('staged ok');`]);
  const probe = spawnSync(cmd!, argv, { ...stage.spawnOptions(), encoding: 'utf8', timeout: 30000 });
  if ((probe.stdout ?? '').trim() !== 'staged ok') {
    remove();
    const lines = (probe.stderr ?? '').trim().split('\n');
    const why = lines.find((l) => /Error/.test(l)) ?? (lines[0] || String(probe.error ?? probe.signal ?? probe.status));
    return `uid ${ids.uid} cannot load the library staged in ${base}: ${why}`;
  }
  owner.teardown(remove);
  return stage;
}
