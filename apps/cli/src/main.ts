import { Command, CommanderError, Option } from 'commander';
import packageJson from '../package.json' with { type: 'json' };
import { EXIT, errorLine, printable, reportError, type CliStreams, type Context } from './context.js';
import type { Driver } from '@ic/core';
import { bundledDrivers, createRegistry, driverModulesFromArgv, driverModulesFromEnv, loadDriverModules, type SourcedDriver } from './drivers.js';
import { checkCommand } from './commands/check.js';
import { convertCommand } from './commands/convert.js';
import { createCommand } from './commands/create.js';
import { demoCommand } from './commands/demo.js';
import { formatsCommand } from './commands/formats.js';
import { infoCommand } from './commands/info.js';
import { mapCommand } from './commands/map.js';
import { recoverCommand } from './commands/recover.js';
import { Interrupts, activityLine, type Activity } from './signals.js';

export const VERSION: string = packageJson.version;

/** Flags that apply to every command and may appear anywhere on the line. */
const GLOBAL_FLAGS = ['--debug', '--untrusted', '--no-lock'];

type Output = 'human' | 'json';

function outputOption(): Option {
  return new Option('--output <format>', 'output format').choices(['human', 'json']).default('human');
}

/** -U as qemu-img has it, on the commands that only read. */
function forceShareOption(): Option {
  return new Option('-U, --force-share', 'read the image even while another process (a VM) writes it; the result may be inconsistent');
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** The commander program; `run` is called by each action with the command's work. */
function buildProgram(context: Context, run: (work: () => Promise<number> | number) => Promise<void>): Command {
  const program = new Command('ic');
  const drivers = context.registry.list().map((d) => `${d.name} ${d.version}`).join(', ');
  program
    .description('Convert virtual-disk images between formats in place; inspect them the way qemu-img does.')
    .version(`ic ${VERSION}\ndrivers: ${drivers || 'none'}`, '-V, --version', 'print the version of ic and of its drivers')
    .option('--debug', 'show stack traces for errors')
    .option('--untrusted', 'refuse images that reference other files (backing files); never open them')
    // Read before the commands are set up (driverModulesFromArgv); declared here for --help and parsing.
    .option('--driver <module>', 'load format drivers from MODULE (./path.js or a package name); repeatable; also IC_DRIVERS=MODULE,...', collect)
    .option('--no-lock', "take and check no QEMU image lock (unsafe: a write cannot tell whether a VM uses the image)")
    .helpOption('-h, --help', 'show help')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => context.out(text),
      writeErr: (text) => context.err(text),
      outputError: (text, write) => write(errorLine(text.replace(/^error:\s*/i, '').replace(/\s*\n\s*/g, ' ').trim(), 'USAGE')),
    });

  program
    .command('info')
    .description('describe an image (qemu-img info)')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .addOption(outputOption())
    .addOption(forceShareOption())
    .argument('<image>', 'image file')
    .action((image: string, options: { format?: string; output: Output }) => run(() => infoCommand(context, image, options)));

  program
    .command('map')
    .description('show where the guest data lives, backing chain included (qemu-img map)')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .addOption(outputOption())
    .addOption(forceShareOption())
    .argument('<image>', 'image file')
    .action((image: string, options: { format?: string; output: Output }) => run(() => mapCommand(context, image, options)));

  program
    .command('check')
    .description('check an image for corruptions and leaks (qemu-img check; exit 0 clean, 2 corrupt, 3 leaks, 1 failed)')
    .option('-f, --format <fmt>', 'image format (default: probe)')
    .addOption(outputOption())
    .addOption(forceShareOption())
    .addOption(new Option('-r, --repair <what>', 'repair leaks or all (only where a driver supports it)').choices(['leaks', 'all']))
    .argument('<image>', 'image file')
    .action((image: string, options: { format?: string; output: Output; repair?: 'leaks' | 'all' }) => run(() => checkCommand(context, image, options)));

  program
    .command('create')
    .description('create an empty image (qemu-img create; an existing file is overwritten)')
    .requiredOption('-f, --format <fmt>', 'format of the new image')
    .option('-o <options>', "format options, e.g. cluster_size=64k ('-o help' lists them)", collect, [])
    .option('-b, --backing <file>', 'backing file (relative names are relative to the image)')
    .option('-F, --backing-format <fmt>', 'format of the backing file (required with -b)')
    .option('-u, --unsafe', 'do not open the backing file (SIZE is then required)')
    .option('-q, --quiet', 'do not print the "Formatting" line')
    .argument('<image>', 'file to create')
    .argument('[size]', 'virtual size, e.g. 10G (default with -b: the backing file\'s)')
    .action(
      (
        image: string,
        size: string | undefined,
        options: { format: string; o: string[]; backing?: string; backingFormat?: string; unsafe?: boolean; quiet?: boolean },
      ) => run(() => createCommand(context, image, size, options)),
    );

  program
    .command('convert-inplace')
    .description('convert an image to another format in place: the data stays, only the metadata is rewritten')
    .option('-f, --format <fmt>', 'current format of the image (default: probe)')
    .option('-o <options>', 'options of the target format', collect, [])
    .option('-p, --progress', 'show progress on stderr')
    .option('--dry-run', 'plan and report without writing anything')
    .option('--zero-scan', 'read every data cluster and leave the all-zero ones unallocated (reads all the data)')
    .option('--compact <when>', 'pack the result so no cluster is left unreferenced: auto, always or never', 'auto')
    .addOption(outputOption())
    .argument('<image>', 'image file (modified in place)')
    .argument('<target_fmt>', 'format to convert to')
    .action((image: string, targetFormat: string, options: { format?: string; o: string[]; progress?: boolean; dryRun?: boolean; zeroScan?: boolean; compact: string; output: Output }) =>
      run(() =>
        convertCommand(context, image, targetFormat, {
          ...(options.format !== undefined ? { format: options.format } : {}),
          o: options.o,
          progress: options.progress === true,
          dryRun: options.dryRun === true,
          zeroScan: options.zeroScan === true,
          compact: options.compact,
          output: options.output,
        }),
      ),
    );

  program
    .command('recover')
    .description('finish or undo an interrupted in-place conversion')
    .argument('<image>', 'image file')
    .option('--trust-record', 'accept a conversion record written for another file (only for a copy of an interrupted image you made yourself)')
    .action((image: string, options: { trustRecord?: boolean }) => run(() => recoverCommand(context, image, { trustForeignRecord: options.trustRecord === true })));

  program
    .command('formats')
    .description('list the installed format drivers and their capabilities')
    .addOption(outputOption())
    .action((options: { output: Output }) => run(() => formatsCommand(context, options)));

  program
    .command('demo')
    .description('build a sample image and convert it in place through every format and back, verifying each step')
    .option('--dir <dir>', 'work in this directory instead of a temporary one')
    .option('--keep', 'keep the sample image')
    .action((options: { dir?: string; keep?: boolean }) =>
      run(() => demoCommand(context, { ...(options.dir !== undefined ? { dir: options.dir } : {}), keep: options.keep === true })),
    );

  program.hook('preAction', (_program, action) => {
    const globals = action.optsWithGlobals() as { debug?: boolean; untrusted?: boolean; lock?: boolean; forceShare?: boolean };
    context.debug = globals.debug === true;
    context.untrusted = globals.untrusted === true;
    context.lock = globals.lock !== false;
    context.forceShare = globals.forceShare === true;
    Object.assign(context.activity, { command: action.name(), file: typeof action.args[0] === 'string' ? action.args[0] : '', phase: 'starting' });
  });
  return program;
}

/** The command line without its --driver options (they are read before the commands are set up). */
function withoutDriverOptions(argv: readonly string[]): string[] {
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--driver') i++;
    else if (!argv[i]!.startsWith('--driver=')) rest.push(argv[i]!);
  }
  return rest;
}

function defaultStreams(): CliStreams {
  return { stdout: process.stdout, stderr: process.stderr, isTTY: process.stderr.isTTY === true };
}

export interface MainOptions {
  /** Drivers to register besides the bundled ones (a driver with a bundled one's name replaces it). */
  drivers?: readonly Driver[];
  /** Modules to load drivers from, as --driver takes them (before IC_DRIVERS and --driver, which win on a name clash). */
  driverModules?: readonly string[];
  /** The environment IC_DRIVERS is read from (default: process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Where package names given to --driver and IC_DRIVERS are resolved from (default: the current directory). */
  cwd?: string;
  /**
   * The executable sets it: while a writing command runs, SIGINT and SIGTERM stop it at the engine's next
   * safe point (exit 128 + signal number); SIGUSR1 prints one progress line on stderr. Library callers leave it
   * off (their process's signals stay theirs) and may pass `signal` instead.
   */
  handleSignals?: boolean;
  /** Stops a writing command at its next safe point, as SIGINT does (exit status 1). */
  signal?: AbortSignal;
}

/**
 * Runs the ic command line and returns the exit status. Never throws: every failure is reported as one line
 * on stderr (`ic: <message> [<CODE>]`), with the stack trace only under --debug.
 */
export async function main(argv: readonly string[], streams: CliStreams = defaultStreams(), options: MainOptions = {}): Promise<number> {
  const debug = argv.includes('--debug');
  const out = (text: string) => void streams.stdout.write(text);
  const err = (text: string) => void streams.stderr.write(text);
  const isTTY = streams.isTTY === true;
  const handleSignals = options.handleSignals === true;
  const activity: Activity = { command: 'ic', file: '', phase: 'starting', done: 0, total: 0 };
  const onProgressSignal = () => err(activityLine(activity));
  if (handleSignals) process.on('SIGUSR1', onProgressSignal);
  try {
    const warn = (line: string) => err(`ic: warning: ${printable(line)}\n`);
    // Order: bundled, main()'s, IC_DRIVERS, --driver; a later driver of the same name replaces an earlier one.
    const modules = [...(options.driverModules ?? []), ...driverModulesFromEnv((options.env ?? process.env).IC_DRIVERS), ...driverModulesFromArgv(argv)];
    const given: SourcedDriver[] = (options.drivers ?? []).map((driver) => ({ driver, source: 'main() options' }));
    const loaded = modules.length > 0 ? await loadDriverModules(modules, options.cwd ?? process.cwd(), warn) : [];
    const { registry, problems, sources } = createRegistry([...bundledDrivers(), ...given, ...loaded], warn);
    const context: Context = {
      registry,
      registryProblems: problems,
      driverSources: sources,
      out,
      err,
      isTTY,
      untrusted: argv.includes('--untrusted'),
      lock: true,
      forceShare: false,
      debug,
      // On a terminal, a signal is acknowledged at once; the line saying what state the image is in follows.
      interrupts: new Interrupts(handleSignals, isTTY ? err : () => undefined, options.signal),
      activity,
    };
    if (debug) for (const problem of problems) err(`ic: warning: driver not loaded: ${problem}\n`);
    if (withoutDriverOptions(argv).filter((arg) => !GLOBAL_FLAGS.includes(arg)).length === 0) {
      err(errorLine("missing command (try 'ic --help')", 'USAGE'));
      return EXIT.USAGE;
    }
    let status: number = EXIT.OK;
    const run = async (work: () => Promise<number> | number) => {
      try {
        status = await work();
      } catch (error) {
        status = reportError(context, error);
        if (context.interrupts.stopped) status = context.interrupts.exitStatus();
      }
    };
    const program = buildProgram(context, run);
    try {
      await program.parseAsync([...argv], { from: 'user' });
    } catch (error) {
      if (error instanceof CommanderError) {
        // Commander already printed the help, the version or the one-line usage error.
        return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' ? EXIT.OK : EXIT.USAGE;
      }
      throw error;
    }
    return status;
  } catch (error) {
    return reportError({ err, debug }, error);
  } finally {
    if (handleSignals) process.off('SIGUSR1', onProgressSignal);
  }
}
