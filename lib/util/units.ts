// Human sizes, for the command lines (daxmap, daxmapd): "1G", "512MiB", "1.5g", "64k", "4096".
import { daxError } from '../errors';

const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw daxError('EINVAL', `cannot read '${text}' as a size (examples: 4096, 64K, 512M, 1G, 2GiB)`);
  const v = Math.round(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!);
  if (!Number.isSafeInteger(v) || v <= 0) throw daxError('EINVAL', `size '${text}' is out of range`);
  return v;
}

export function formatSize(n: number): string {
  if (n < 1024) return `${n}B`;
  const units = ['K', 'M', 'G', 'T', 'P'];
  let v = n;
  let i = -1;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)}${units[i]}`;
}
