import { main, type MainOptions } from '../src/index.js';

export interface IcResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `ic ARGS` in-process with captured output (stderr is not a terminal unless asked). */
export async function runIc(args: readonly string[], options: { isTTY?: boolean } & MainOptions = {}): Promise<IcResult> {
  let stdout = '';
  let stderr = '';
  const { isTTY, ...mainOptions } = options;
  const code = await main(
    args,
    {
      stdout: { write: (text: string) => (stdout += text) },
      stderr: { write: (text: string) => (stderr += text) },
      isTTY: isTTY ?? false,
    },
    mainOptions,
  );
  return { code, stdout, stderr };
}

/** `ic ... --output=json`, parsed. */
export async function icJson<T = unknown>(args: readonly string[]): Promise<T> {
  const result = await runIc([...args, '--output=json']);
  if (result.code !== 0) throw new Error(`ic ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  return JSON.parse(result.stdout) as T;
}

/** The error line format: exactly one line, `ic: <message> [<CODE>]`. */
export { IC_ERROR_LINE as ERROR_LINE } from '@ic/test-utils';
