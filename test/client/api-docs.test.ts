// The docs keep their promises:
// - docs/api.md names every export of the package root, and every method, property,
//   event and option it documents (its `### \`…\`` headings and option tables) is
//   exercised by the test file COVERAGE gives (which must use it: `.name(`, `name:`,
//   `await using`, the event's name). COVERAGE and docs/api.md must list the same.
// - Every code lib/ throws (daxError('X', …)) is in the ErrorCode type.
// - No @internal member reaches the .d.ts; docs/pool.md's stat() fields are FileStat's.
// - The README's example runs as written.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';

const ROOT = path.resolve(__dirname, '..', '..');
const read = (p: string): string => fs.readFileSync(path.join(ROOT, p), 'utf8');

/** Each documented item of docs/api.md → the test file that exercises it. */
const COVERAGE: Record<string, string> = {
  'Pool.create': 'test/client/conventions.test.ts',
  'Pool.create { size }': 'test/client/conventions.test.ts',
  'Pool.create { force }': 'test/fault/lifecycle.test.ts',
  'Pool.create { logger }': 'test/client/conventions.test.ts',
  'Pool.open': 'test/client/conventions.test.ts',
  'Pool.open { logger }': 'test/client/conventions.test.ts',
  'Pool.connect': 'test/daemon/conventions.test.ts',
  'Pool.connect { timeoutMs }': 'test/daemon/connect-timeout.test.ts',
  'Pool.connect { signal }': 'test/daemon/connect-timeout.test.ts',
  'Pool.connect { logger }': 'test/daemon/conventions.test.ts',
  'Pool.attach': 'test/client/conventions.test.ts',
  'Pool.attach { logger }': 'test/client/conventions.test.ts',
  'pool.path': 'test/client/conventions.test.ts',
  'pool.closed': 'test/client/conventions.test.ts',
  'pool.share': 'test/client/conventions.test.ts',
  'pool.openFile': 'test/client/conventions.test.ts',
  'pool.openFile { create }': 'test/client/conventions.test.ts',
  'pool.openFile { exclusive }': 'test/client/conventions.test.ts',
  'pool.openFile { mode }': 'test/client/conventions.test.ts',
  'pool.unlink': 'test/fault/revoke.test.ts',
  'pool.rename': 'test/fault/revoke.test.ts',
  'pool.list': 'test/client/conventions.test.ts',
  'pool.statfs': 'test/fault/revoke.test.ts',
  'pool.settled': 'test/pool/clean.test.ts',
  'pool.sync': 'test/client/arguments.test.ts',
  'pool.stats': 'test/fault/rules.test.ts',
  'pool.close': 'test/client/conventions.test.ts',
  'pool[Symbol.asyncDispose]': 'test/client/conventions.test.ts',
  "event 'close'": 'test/daemon/conventions.test.ts',
  "event 'error'": 'test/daemon/conventions.test.ts',
  'file.pool': 'test/client/conventions.test.ts',
  'file.name': 'test/client/conventions.test.ts',
  'file.stat': 'test/client/conventions.test.ts',
  'file.truncate': 'test/client/big-mapping.test.ts',
  'file.fallocate': 'test/client/conventions.test.ts',
  'file.fallocate { keepSize }': 'test/client/conventions.test.ts',
  'file.punchHole': 'test/client/big-mapping.test.ts',
  'file.zeroRange': 'test/client/conventions.test.ts',
  'file.zeroRange { keepSize }': 'test/client/conventions.test.ts',
  'file.write': 'test/client/big-mapping.test.ts',
  'file.read': 'test/client/big-mapping.test.ts',
  'file.fsync': 'test/daemon/conventions.test.ts',
  'file.map': 'test/client/big-mapping.test.ts',
  'file.map { offset }': 'test/client/conventions.test.ts',
  'file.map { length }': 'test/client/conventions.test.ts',
  'file.map { private }': 'test/client/conventions.test.ts',
  'file.map { sync }': 'test/client/read-only.test.ts',
  'file.map { faultAround }': 'test/fault/lifecycle.test.ts',
  'file.map { readOnly }': 'test/client/read-only.test.ts',
  'file.close': 'test/client/conventions.test.ts',
  'file[Symbol.asyncDispose]': 'test/client/conventions.test.ts',
  'm.file': 'test/client/conventions.test.ts',
  'm.offset': 'test/client/conventions.test.ts',
  'm.length': 'test/client/big-mapping.test.ts',
  'm.buffer': 'test/client/big-mapping.test.ts',
  'm.arrayBuffer': 'test/client/big-mapping.test.ts',
  'm.view': 'test/client/big-mapping.test.ts',
  'm.load': 'test/client/big-mapping.test.ts',
  'm.store': 'test/client/big-mapping.test.ts',
  'm.private': 'test/client/conventions.test.ts',
  'm.sync': 'test/client/conventions.test.ts',
  'm.readOnly': 'test/client/read-only.test.ts',
  'm.mapped': 'test/client/conventions.test.ts',
  'm.flush': 'test/client/big-mapping.test.ts',
  'm.unmap': 'test/client/big-mapping.test.ts',
  'm[Symbol.asyncDispose]': 'test/client/conventions.test.ts',
  probeUffd: 'test/client/conventions.test.ts',
  reportSigbus: 'test/client/conventions.test.ts',
  isDaxError: 'test/client/conventions.test.ts',
  DaxmapError: 'test/client/conventions.test.ts',
  ErrorCode: 'test/client/conventions.test.ts',
};

/** The items docs/api.md documents: `### \`sig\`` headings (up to the parenthesis), `### Event \`'name'\``, and the rows of option tables under a heading. */
function documented(md: string): string[] {
  const keys: string[] = [];
  let heading: string | null = null;
  let inOptions = false;
  for (const line of md.split('\n')) {
    let m: RegExpExecArray | null;
    if ((m = /^### Event `'(\w+)'`/.exec(line))) {
      keys.push((heading = `event '${m[1]}'`));
      inOptions = false;
    } else if ((m = /^### `([^`]+)`/.exec(line))) {
      keys.push((heading = m[1]!.replace(/\(.*$/, '')));
      inOptions = false;
    } else if (/^\| option \|/.test(line)) {
      inOptions = true;
    } else if (inOptions && (m = /^\| `(\w+)` \|/.exec(line))) {
      keys.push(`${heading} { ${m[1]} }`);
    } else if (!line.startsWith('|')) {
      inOptions = false;
    }
  }
  return keys;
}

/** What a test file must contain to exercise `key`. */
function usage(key: string): RegExp {
  const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  let m: RegExpExecArray | null;
  if ((m = /\{ (\w+) \}$/.exec(key))) return new RegExp(`\\b${m[1]}\\s*:`);
  if ((m = /^event '(\w+)'$/.exec(key))) return new RegExp(`\\.on(ce)?\\('${m[1]}'`);
  if (key.endsWith('[Symbol.asyncDispose]')) return /\bawait using\b/;
  if ((m = /^Pool\.(\w+)$/.exec(key))) return new RegExp(`Pool\\.${m[1]}\\(`);
  if ((m = /^\w+\.(\w+)$/.exec(key))) return new RegExp(`\\.${esc(m[1]!)}\\b`);
  return new RegExp(`\\b${esc(key)}\\b`);
}

t.test('docs/api.md: every documented item is exercised by the test COVERAGE names, and COVERAGE is complete', async (t) => {
  const keys = documented(read('docs/api.md'));
  t.ok(keys.length > 60, `docs/api.md documents ${keys.length} items`);
  t.same([...keys].sort(), Object.keys(COVERAGE).sort(), 'COVERAGE lists exactly what docs/api.md documents');
  for (const key of keys) {
    const file = COVERAGE[key];
    if (file === undefined) continue;
    t.match(read(file), usage(key), `${key}: used in ${file}`);
  }
});

t.test('docs/api.md names every export of the package root', async (t) => {
  const md = read('docs/api.md');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const runtime = Object.keys(require(path.join(ROOT, 'dist', 'index.js')) as object);
  const types = [...read('lib/index.ts').matchAll(/\btype (\w+)(?: as (\w+))?/g)].map((m) => m[2] ?? m[1]!);
  const exportTypes = /export type \{([^}]*)\}/g;
  for (const m of read('lib/index.ts').matchAll(exportTypes)) {
    for (const part of m[1]!.split(',')) {
      const name = part.trim().split(/\s+as\s+/).pop()!;
      if (name) types.push(name);
    }
  }
  t.ok(runtime.includes('Pool') && types.includes('FileStat'), 'the exports were read');
  for (const name of new Set([...runtime, ...types])) {
    t.match(md, new RegExp(`\`${name}[\`.(\\[]`), `${name} is in docs/api.md`);
  }
});

t.test('every code thrown in lib/ is in the ErrorCode type', async (t) => {
  const union = /export type ErrorCode =([^;]*);/.exec(read('lib/errors.ts'))?.[1] ?? '';
  const listed = new Set([...union.matchAll(/'([A-Z_0-9]+)'/g)].map((m) => m[1]));
  const thrown = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (rel.endsWith('.ts')) for (const m of read(rel).matchAll(/daxError\(\s*'([A-Z_0-9]+)'/g)) thrown.set(m[1]!, rel);
    }
  };
  walk('lib');
  t.ok(thrown.size > 10, `${thrown.size} codes are thrown in lib/`);
  for (const [code, where] of thrown) t.ok(listed.has(code), `${code} (thrown in ${where}) is in ErrorCode`);
});

t.test('no @internal member reaches the .d.ts; docs/pool.md\'s stat() fields are in FileStat', async (t) => {
  t.match(read('tsconfig.json'), /"stripInternal": true/);
  const dts: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (rel.endsWith('.d.ts')) dts.push(rel);
    }
  };
  walk('dist');
  t.ok(dts.length > 10);
  for (const f of dts) t.notMatch(read(f), /@internal/, `${f} has nothing marked @internal`);
  // The members marked @internal in the client are absent from its declarations.
  const src = read('lib/client/pool.ts');
  const internal = [...src.matchAll(/\/\*\*[\s*]*@internal[^*]*(?:\*(?!\/)[^*]*)*\*\/\s*(?:export\s+const\s+|static\s+|readonly\s+|async\s+)*(\w+)/g)].map((m) => m[1]!);
  t.ok(internal.includes('request') && internal.includes('lost'), `internal members found: ${internal.join(', ')}`);
  const decl = read('dist/client/pool.d.ts');
  for (const name of internal) {
    t.notMatch(decl, new RegExp(`^\\s+(?:static |readonly )*${name}[(:<?]`, 'm'), `${name} is not declared in dist/client/pool.d.ts`);
  }
  const fileStat = /export interface FileStat \{([\s\S]*?)\n\}/.exec(decl)?.[1] ?? '';
  const documentedFields = /f\.stat\(\);\s*\/\/ \{([^}]*extents[^}]*\}\][^}]*)\}/.exec(read('docs/pool.md'))?.[1] ?? '';
  const fields = documentedFields.replace(/\[[^\]]*\]/g, '').split(',').map((x) => x.trim().split(':')[0]!.trim()).filter(Boolean);
  t.same(fields, ['name', 'size', 'allocated', 'extents', 'mode', 'uid', 'gid', 'mtimeMs'], 'the fields docs/pool.md documents');
  for (const f of fields) t.match(fileStat, new RegExp(`\\b${f}\\??:`), `FileStat has ${f}`);
});

t.test("the README's example runs as written", async (t) => {
  const readme = read('README.md');
  const section = readme.slice(readme.indexOf('## Using it'));
  const code = /```js\n([\s\S]*?)```/.exec(section)?.[1];
  t.ok(code, 'the example was found');
  t.match(code!, /from 'daxmap'/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'daxmap-readme-'));
  const device = path.join('/dev/shm', `daxmap-readme-${process.pid}.pool`);
  t.teardown(() => {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.rmSync(device, { force: true });
  });
  // Only the package name and the device path change: the package is this checkout.
  const runnable = code!
    .replace(`from 'daxmap'`, `from '${pathToFileURL(path.join(ROOT, 'dist', 'index.js')).href}'`)
    .replaceAll('/dev/shm/my.pool', device);
  const file = path.join(dir, 'example.mjs');
  fs.writeFileSync(file, `${runnable}\nconsole.log('example done');\n`);
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 120000 });
  t.equal(r.status, 0, `it exits 0: ${r.stderr}`);
  t.match(r.stdout, /example done/);
});
