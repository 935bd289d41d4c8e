#!/usr/bin/env node
import { main } from './main.js';

// `ic map big.img | head`: a closed pipe ends the output quietly instead of with a stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw error;
  });
}

process.exitCode = await main(process.argv.slice(2), undefined, { handleSignals: true });
