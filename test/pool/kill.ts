// Running a child that reports its progress line by line, and SIGKILLing it at a
// point that depends on that progress (so it does not depend on how loaded the
// machine is): the crash tests' driver. Lines: "ready", "dirty <name>", "synced
// <name> <sha1 of the whole file>", "error <stack>".
import { spawn } from 'node:child_process';

/**
 * Kill the child once it has reported `afterLines` lines, after a further random
 * delay. Returns the files whose last event was "synced" (with their hashes), and
 * the last line of every other kind the child printed (by its first word).
 */
export async function runAndKill(child: string, args: string[], afterLines: number, delayMs: number): Promise<{ synced: Map<string, string>; lines: number; last: Map<string, string> }> {
  const p = spawn(process.execPath, [child, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const synced = new Map<string, string>();
  const last = new Map<string, string>();
  let buf = '';
  let lines = 0;
  let killTimer: NodeJS.Timeout | undefined;
  let failed = null as Error | null; // set by the child's output handler
  const exited = new Promise<{ code: number | null; signal: string | null }>((res) => p.on('exit', (code, signal) => res({ code, signal })));
  p.stdout.setEncoding('utf8');
  p.stdout.on('data', (d: string) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines++;
      const [kind, name, hash] = line.split(' ');
      if (lines === afterLines) killTimer = setTimeout(() => p.kill('SIGKILL'), delayMs);
      if (kind === 'ready') continue;
      else if (kind === 'dirty') synced.delete(name!);
      else if (kind === 'synced') synced.set(name!, hash!);
      else if (kind === 'error') failed = new Error(`child failed: ${line}`);
      else last.set(kind!, line);
    }
  });
  const { signal } = await exited;
  clearTimeout(killTimer);
  if (failed) throw failed;
  if (signal !== 'SIGKILL') throw new Error(`child ended without being killed (${signal})`);
  return { synced, lines, last };
}
