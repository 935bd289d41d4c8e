import { MemoryIO, type BlockIO } from '@ic/core';
import { CrashSpace, GENERATORS, RecordingIO, type EnumerationOptions, type GeneratorName } from '@ic/conformance';

/** One state a crash can leave a file in: its bytes and where in the trace it lies. */
export interface CrashedFile {
  where: string;
  bytes: Uint8Array;
}

/**
 * Runs `operation` on an in-memory copy of `start`, recording every write, truncate and flush, and yields each
 * distinct state a crash during it can leave (the conformance kit's model: by default every generator of GENERATORS).
 */
export async function* crashStatesOf(
  start: Uint8Array,
  operation: (io: BlockIO) => Promise<unknown>,
  options: EnumerationOptions & { generators?: readonly GeneratorName[] } = { samples: 12, maxTearPoints: 2, maxSubsetOps: 4 },
): AsyncGenerator<CrashedFile> {
  const recording = await RecordingIO.wrap(new MemoryIO(start.slice(), 'crash-states'));
  await operation(recording);
  const space = new CrashSpace(recording.recording());
  if (space.stats().writes === 0) throw new Error('the operation wrote nothing: there is no crash to look at');
  const seen = new Set<string>();
  for (const generator of options.generators ?? GENERATORS) {
    for (const state of space.generate(generator, options)) {
      if (seen.has(state.key)) continue;
      seen.add(state.key);
      const io = await space.materialise(state);
      yield { where: space.describe(state), bytes: await io.read(0, await io.size()) };
    }
  }
}
