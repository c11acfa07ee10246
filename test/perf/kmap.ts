// The kernel's own mapping of a file (MAP_SHARED or MAP_PRIVATE), the baseline of every
// row of the benchmark table: kmap.c, compiled here on first use (cc and the Node-API
// headers; no daxmap code involved).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

interface KmapAddon {
  map(path: string, length: number, priv: boolean): ArrayBuffer;
  unmap(ab: ArrayBuffer): void;
}

let addon: KmapAddon | undefined;

function headers(): string {
  const candidates = [path.join(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node', '/usr/local/include/node'];
  const dir = candidates.find((d) => fs.existsSync(path.join(d, 'node_api.h')));
  if (dir === undefined) throw new Error(`kmap: node_api.h not found in ${candidates.join(', ')}`);
  return dir;
}

/**
 * Compiles test/perf/<name>.c as a Node-API addon into `dir` (a private directory the
 * caller made): its path, for child processes to load (row 8's kernel clients).
 */
export function buildAddonIn(name: string, dir: string): string {
  const out = path.join(dir, `${name}.node`);
  execFileSync(process.env['CC'] ?? 'cc', ['-O2', '-Wall', '-shared', '-fPIC', '-I', headers(), '-o', out, path.join(__dirname, `${name}.c`)], { stdio: ['ignore', 'inherit', 'inherit'] });
  return out;
}

/** Compiles test/perf/<name>.c as a Node-API addon and loads it (kmap.c here, reads.c for row 13). */
export function buildAddon<T>(name: string): T {
  // Built afresh into a private directory (mkdtemp, mode 0700): never loaded from a
  // predictable path someone else could have written.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `daxmap-bench-${name}-`));
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a native addon built at run time
    return require(buildAddonIn(name, dir)) as T;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true }); // a loaded library stays loaded
  }
}

function load(): KmapAddon {
  addon ??= buildAddon<KmapAddon>('kmap');
  return addon;
}

/** A file of `size` bytes created for a baseline: sparse, or written through with `fillByte`. */
export function makeFile(file: string, size: number, fillByte?: number): void {
  const fd = fs.openSync(file, 'w+');
  try {
    fs.ftruncateSync(fd, size);
    if (fillByte !== undefined) {
      const chunk = Buffer.alloc(Math.min(size, 1 << 20), fillByte);
      for (let off = 0; off < size; off += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - off), off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** The kernel's mapping of a whole file, MAP_SHARED (or MAP_PRIVATE), read-write. */
export class KernelMapping {
  readonly buffer: Buffer;
  private readonly ab: ArrayBuffer;

  constructor(readonly file: string, readonly size: number, priv = false) {
    this.ab = load().map(file, size, priv);
    this.buffer = Buffer.from(this.ab);
  }

  unmap(): void {
    load().unmap(this.ab);
  }
}

/** A fresh file under `dir` (sparse, or written with `fillByte`), mapped; `close` unmaps and removes it. */
export class KernelFile {
  readonly map: KernelMapping;

  private constructor(readonly file: string, size: number, priv: boolean) {
    this.map = new KernelMapping(file, size, priv);
  }

  static create(file: string, size: number, opts: { fillByte?: number; private?: boolean } = {}): KernelFile {
    makeFile(file, size, opts.fillByte);
    try {
      return new KernelFile(file, size, opts.private === true);
    } catch (e) {
      fs.rmSync(file, { force: true });
      throw e;
    }
  }

  get buffer(): Buffer {
    return this.map.buffer;
  }

  /** Bytes the file system allocated to the file (st_blocks). */
  allocated(): number {
    return fs.statSync(this.file).blocks * 512;
  }

  close(): void {
    try {
      this.map.unmap();
    } finally {
      fs.rmSync(this.file, { force: true });
    }
  }
}
