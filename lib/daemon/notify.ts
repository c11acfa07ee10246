// The systemd readiness protocol (sd_notify), without libsystemd: one datagram of
// "KEY=value" lines to the UNIX datagram socket named by $NOTIFY_SOCKET (a path, or
// "@name" for the abstract namespace). Node has no UNIX datagram sockets, so the
// addon sends it (native unixDatagramSend).
import { native } from '../native/addon';

/** Sends the lines to $NOTIFY_SOCKET; false when it is not set (not under a Type=notify unit). Throws what sendto(2) says. */
export function notifySystemd(...lines: string[]): boolean {
  const target = process.env.NOTIFY_SOCKET;
  if (!target) return false;
  native().unixDatagramSend(target, Buffer.from(`${lines.join('\n')}\n`));
  return true;
}
