// The layering rules of docs/architecture.md, checked over the import graph of lib/
// (every `import`/`export ... from`, type-only ones included, and `require`).
import fs from 'node:fs';
import path from 'node:path';

/** Layers, lowest first. A module may import its own layer and the layers below. */
export const LAYERS: { name: string; dirs: string[] }[] = [
  { name: 'base', dirs: ['errors.ts', 'log.ts', 'deadline.ts', 'lock', 'util', 'types'] },
  { name: 'native', dirs: ['native'] },
  { name: 'device', dirs: ['device'] },
  { name: 'pool', dirs: ['pool'] },
  { name: 'fault', dirs: ['fault'] },
  { name: 'protocol', dirs: ['protocol'] },
  { name: 'service', dirs: ['service'] },
  // daemon and client are peers above the service: neither imports the other.
  { name: 'daemon', dirs: ['daemon'] },
  { name: 'client', dirs: ['client'] },
  { name: 'cli', dirs: ['cli'] },
  { name: 'entry', dirs: ['index.ts'] },
];

/** Edges forbidden even where the order would allow them. */
const PEERS: [string, string][] = [['client', 'daemon'], ['daemon', 'client']];

export interface Edge { from: string; to: string }

/** `lib/`-relative path → its layer name, or null if no layer claims it. */
export function layerOf(rel: string): string | null {
  const top = rel.split('/')[0]!;
  for (const l of LAYERS) if (l.dirs.includes(top)) return l.name;
  return null;
}

/** Every import edge between modules of `libDir` (paths relative to it, with extension). */
export function importGraph(libDir: string): Edge[] {
  const edges: Edge[] = [];
  const re = /(?:\bfrom\s*|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (const rel of libFiles(libDir)) {
    const p = path.join(libDir, rel);
    const src = fs.readFileSync(p, 'utf8');
    for (let m = re.exec(src); m; m = re.exec(src)) {
      let target = path.resolve(path.dirname(p), m[1]!);
      if (fs.existsSync(target + '.ts')) target += '.ts';
      else if (fs.existsSync(path.join(target, 'index.ts'))) target = path.join(target, 'index.ts');
      edges.push({ from: rel, to: path.relative(libDir, target) });
    }
  }
  return edges;
}

/** What breaks the rules, one line each (empty: none). */
export function violations(edges: Edge[], files: string[]): string[] {
  const out: string[] = [];
  const rank = new Map(LAYERS.map((l, i) => [l.name, i]));
  for (const f of files) if (layerOf(f) === null) out.push(`${f}: in no layer (add its directory to LAYERS in test/arch/import-rules.ts and to docs/architecture.md)`);
  for (const e of edges) {
    const a = layerOf(e.from);
    const b = layerOf(e.to);
    if (a === null || b === null) continue;
    if (e.to.startsWith('..')) {
      out.push(`${e.from} imports ${e.to}, outside lib/`);
      continue;
    }
    if (rank.get(b)! > rank.get(a)!) out.push(`${e.from} (${a}) imports ${e.to} (${b}): a higher layer`);
    if (PEERS.some(([x, y]) => x === a && y === b)) out.push(`${e.from} (${a}) imports ${e.to} (${b}): ${a} and ${b} are peers`);
    // Above the pool, only its public surface (lib/pool/index.ts) is for the CLI;
    // the fault policy and the service use lib/pool/internal.ts as well.
    if (b === 'pool' && a !== 'pool') {
      const allowed = a === 'cli' ? ['pool/index.ts'] : ['pool/index.ts', 'pool/internal.ts'];
      if (!allowed.includes(e.to)) out.push(`${e.from} (${a}) imports ${e.to}: pool internals (use ${allowed.join(' or ')})`);
    }
  }
  return out;
}

export function libFiles(libDir: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) out.push(path.relative(libDir, p));
    }
  };
  walk(libDir);
  return out;
}
