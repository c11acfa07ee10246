// fsck of a pool device by path, for tests: the device opened exclusively (so
// nothing else has it open), checked, closed. Returns the problems found.
import { openDevice } from '../dist/device/device';
import { fsckStorage } from '../dist/pool/fsck';

export function fsckErrors(device: string): string[] {
  const dev = openDevice(device, { exclusive: true });
  try {
    return fsckStorage(dev).errors;
  } finally {
    dev.close();
  }
}
