// node:util parseArgs for the command lines (daxmap, daxmapd), with its errors in
// their words: "unknown option '--x'", "--x needs a value", "--x takes no value".
import { parseArgs } from 'node:util';

export class UsageError extends Error {
  readonly code = 'EUSAGE';
}

/** An option: a string value or a flag, with an optional short letter and default. */
export type OptionSpec = { type: 'string'; short?: string; default?: string } | { type: 'boolean'; short?: string; default?: boolean };
export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** Strict parse of `argv`; a UsageError for anything parseArgs refuses. */
export function parseCommandLine(argv: string[], options: Record<string, OptionSpec>, positionals: boolean): Parsed {
  try {
    const r = parseArgs({ args: argv, options, strict: true, allowPositionals: positionals });
    return { values: r.values as Parsed['values'], positionals: r.positionals };
  } catch (err) {
    const e = err as Error & { code?: string };
    const opt = /'(-[^']*)'/.exec(e.message)?.[1] ?? '';
    const name = opt.replace(/^(-[^-]|--[^ =]+).*$/, '$1');
    switch (e.code) {
      case 'ERR_PARSE_ARGS_UNKNOWN_OPTION': throw new UsageError(`unknown option '${name}' (see --help)`);
      case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL': throw new UsageError(`unexpected argument '${/'([^']*)'/.exec(e.message)?.[1] ?? ''}' (see --help)`);
      case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE': {
        const long = /(--[a-z-]+)/.exec(e.message)?.[1] ?? name;
        throw new UsageError(/argument (missing|is ambiguous)/.test(e.message) ? `${long} needs a value` : `${long} takes no value`);
      }
      default: throw new UsageError(e.message);
    }
  }
}
