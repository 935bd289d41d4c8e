#!/usr/bin/env node
// SIGUSR1 starts Node's inspector (a debugger port) unless the process listens for it. Listen before loading
// anything else, so that no SIGUSR1 at any moment opens a port; the CLI prints a progress line on SIGUSR1.
process.on('SIGUSR1', () => undefined);
await import('../dist/cli.js');
