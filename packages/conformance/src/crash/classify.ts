import { alignUp, inspectInterrupted, isIcError, recover, type BlockIO, type Driver, type Image, type OpenOptions, type Registry } from '@ic/core';
import { backingDataWindows, compareGuestBytes, type GuestContent } from './content.js';
import { ReadOnlyView } from './recording-io.js';

/**
 * Verdicts of the crash oracle (reliability.md §2.4). SILENT_BAD, DATA_LOSS and UNTYPED_ERROR must never
 * occur; DETECTED_REFUSED is acceptable only under models stronger than sector atomicity.
 */
export type Outcome =
  /** Opens as the source with the pristine content, structures valid (leaks allowed). */
  | 'OLD_INTACT'
  /** A raw source whose first N bytes are intact but which is longer than before and that recover cannot shrink. */
  | 'OLD_INTACT_GROWN'
  /** Opens as the target with the pristine content, structures valid (leaks allowed). */
  | 'NEW_INTACT'
  /** Intact as the source only after recover(). */
  | 'RECOVERED_OLD'
  /** Intact as the target only after recover(). */
  | 'RECOVERED_NEW'
  /** Refused with a typed error even after recover(). */
  | 'DETECTED_REFUSED'
  /** Opens without error but reads wrong content, fails its own check, or is taken for another format. */
  | 'SILENT_BAD'
  /** recover() acted and left wrong content behind. */
  | 'DATA_LOSS'
  /** Something threw an error that is not an IcError (a bug). */
  | 'UNTYPED_ERROR';

export const OUTCOMES: readonly Outcome[] = [
  'OLD_INTACT',
  'OLD_INTACT_GROWN',
  'NEW_INTACT',
  'RECOVERED_OLD',
  'RECOVERED_NEW',
  'DETECTED_REFUSED',
  'SILENT_BAD',
  'DATA_LOSS',
  'UNTYPED_ERROR',
];

/** Outcomes that mean the conversion is not crash-safe. */
export const FAILING_OUTCOMES: readonly Outcome[] = ['SILENT_BAD', 'DATA_LOSS', 'UNTYPED_ERROR'];

/** What a reader that probes the file sees, without recovering anything. */
export type View = 'old' | 'old-grown' | 'new' | 'refused' | 'wrong' | 'other-format' | 'untyped';

export interface Classification {
  outcome: Outcome;
  detail: string;
  /** For states that carry an interrupted-conversion mark: what a reader that does not recover sees. */
  beforeRecovery?: View;
  /** Why, when that reader does not see an intact image. */
  beforeRecoveryDetail?: string;
  recovery?: 'none' | 'rolled-back' | 'rolled-forward';
  /** Leaked clusters reported by the driver's check, when intact. */
  leaks?: number;
}

export interface ClassifierOptions {
  registry: Registry;
  sourceDriver: string;
  targetDriver: string;
  /** The guest content before the conversion. */
  pristine: GuestContent;
  /** Options every open uses (the backing image of shapes with a backing reference). */
  openOptions?: OpenOptions;
  /**
   * Also look at states that carry an interrupted-conversion mark before recovering them, and report what a
   * reader that does not recover would see (Classification.beforeRecovery). Costs one more open per such
   * state. Default true.
   */
  viewBeforeRecovery?: boolean;
}

type Look =
  | { kind: 'intact'; side: 'old' | 'new'; grown: boolean; leaks: number }
  | { kind: 'wrong'; side: 'old' | 'new' | 'other'; detail: string }
  | { kind: 'refused'; detail: string }
  | { kind: 'untyped'; detail: string };

const PROBE_LENGTH = 64 * 1024;

/**
 * A driver that accepts any bytes (raw): its probe answers at most 1, and more than 0, for every input.
 * Detected by behaviour, never by name.
 */
export function acceptsAnyBytes(driver: Driver): boolean {
  const samples = [new Uint8Array(0), new Uint8Array(512), new Uint8Array(4096).fill(0xff), new Uint8Array(512).fill(0x5a)];
  try {
    return samples.every((head) => {
      const score = driver.probe(head, head.length);
      return score > 0 && score <= 1;
    });
  } catch {
    return false;
  }
}

function message(error: unknown): string {
  if (isIcError(error)) return `${error.code}: ${error.message}`;
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/**
 * Classifies crash states of one conversion: format-agnostic, it knows the source and target only as
 * drivers from the registry and the pristine guest content.
 */
export class Classifier {
  readonly source: Driver;
  readonly target: Driver;
  private readonly rawLike = new Map<Driver, boolean>();
  private backingWindows: ReadonlySet<number> | undefined;

  constructor(readonly options: ClassifierOptions) {
    this.source = options.registry.get(options.sourceDriver);
    this.target = options.registry.get(options.targetDriver);
  }

  isRawLike(driver: Driver): boolean {
    let known = this.rawLike.get(driver);
    if (known === undefined) this.rawLike.set(driver, (known = acceptsAnyBytes(driver)));
    return known;
  }

  /** One look at the file as a reader would take it: probe, open read-only, compare, check. Never writes. */
  async look(io: BlockIO): Promise<Look> {
    const { registry, pristine, openOptions } = this.options;
    let image: Image | undefined;
    try {
      const size = await io.size();
      const head = await io.read(0, Math.min(PROBE_LENGTH, size));
      const results = registry.probeBytes(head, size);
      const claimed = results.filter((r) => r.score > 1);
      if (claimed.length > 1) return { kind: 'wrong', side: 'other', detail: `claimed by ${claimed.map((r) => r.driver.name).join(' and ')} (a polyglot)` };
      const driver = (claimed[0] ?? results[0])?.driver;
      if (!driver) return { kind: 'refused', detail: 'WRONG_FORMAT: no installed driver recognises the file' };
      const side = driver === this.source ? 'old' : driver === this.target ? 'new' : 'other';
      image = await driver.open(new ReadOnlyView(io), openOptions);
      if (side === 'other') return { kind: 'wrong', side, detail: `opens as ${driver.name}` };
      const info = image.info();
      this.backingWindows ??= await backingDataWindows(openOptions?.backing);
      const compare = { backingWindows: this.backingWindows, ...(openOptions?.backing ? { backing: openOptions.backing } : {}) };
      if (this.isRawLike(driver)) {
        // Raw: the guest is the file. Intact means the first N bytes are the pristine ones; a longer file "grew".
        if (info.virtualSize < pristine.virtualSize) return { kind: 'wrong', side, detail: `${driver.name} shrank to ${info.virtualSize} bytes from ${pristine.virtualSize}` };
        const difference = await compareGuestBytes(image, pristine, { ...compare, limit: pristine.virtualSize });
        if (difference) return { kind: 'wrong', side, detail: `${driver.name}: ${difference}` };
        return { kind: 'intact', side, grown: info.virtualSize > pristine.virtualSize, leaks: 0 };
      }
      // A raw source of odd length becomes a target of whole sectors; the padding reads as zeros.
      const sizes = this.isRawLike(this.source) ? [pristine.virtualSize, alignUp(pristine.virtualSize, 512)] : [pristine.virtualSize];
      if (!sizes.includes(info.virtualSize)) return { kind: 'wrong', side, detail: `${driver.name}: virtual size ${info.virtualSize}, expected ${pristine.virtualSize}` };
      if (info.backing?.name !== pristine.backingName) {
        return { kind: 'wrong', side, detail: `${driver.name}: backing ${JSON.stringify(info.backing?.name)}, expected ${JSON.stringify(pristine.backingName)}` };
      }
      const difference = await compareGuestBytes(image, pristine, compare);
      if (difference) return { kind: 'wrong', side, detail: `${driver.name}: ${difference}` };
      let leaks = 0;
      if (image.check) {
        const report = await image.check();
        if (report.corruptions > 0 || report.checkErrors > 0) {
          return { kind: 'wrong', side, detail: `${driver.name} check: ${report.corruptions} corruptions, ${report.checkErrors} errors (${report.messages[0] ?? ''})` };
        }
        leaks = report.leaks;
      }
      return { kind: 'intact', side, grown: false, leaks };
    } catch (error) {
      return isIcError(error) ? { kind: 'refused', detail: message(error) } : { kind: 'untyped', detail: message(error) };
    } finally {
      await image?.close().catch(() => undefined);
    }
  }

  private view(look: Look): View {
    switch (look.kind) {
      case 'intact':
        return look.side === 'new' ? 'new' : look.grown ? 'old-grown' : 'old';
      case 'wrong':
        return look.side === 'other' ? 'other-format' : 'wrong';
      case 'refused':
        return 'refused';
      case 'untyped':
        return 'untyped';
    }
  }

  /**
   * The verdict for a crash state. May run recover() on `io` (the state is disposable). Steps: a file without
   * an interrupted-conversion mark must open intact as it is; otherwise (or when it does not open) recover
   * and look again.
   */
  async classify(io: BlockIO): Promise<Classification> {
    let interrupted: Awaited<ReturnType<typeof inspectInterrupted>>;
    try {
      interrupted = await inspectInterrupted(io);
    } catch (error) {
      return { outcome: isIcError(error) ? 'DETECTED_REFUSED' : 'UNTYPED_ERROR', detail: `inspectInterrupted: ${message(error)}` };
    }
    let beforeRecovery: View | undefined;
    let beforeRecoveryDetail: string | undefined;
    if (interrupted === 'none') {
      const first = await this.look(io);
      if (first.kind === 'intact' && !first.grown) {
        return { outcome: first.side === 'old' ? 'OLD_INTACT' : 'NEW_INTACT', detail: 'intact', leaks: first.leaks };
      }
      if (first.kind === 'wrong') return { outcome: 'SILENT_BAD', detail: `before recovery: ${first.detail}` };
      if (first.kind === 'untyped') return { outcome: 'UNTYPED_ERROR', detail: `before recovery: ${first.detail}` };
      // Refused, or a raw source that grew: see whether recovery changes anything.
    } else if (this.options.viewBeforeRecovery !== false) {
      const before = await this.look(io);
      beforeRecovery = this.view(before);
      if (before.kind !== 'intact') beforeRecoveryDetail = before.detail;
    }
    let action: Classification['recovery'];
    try {
      action = (await recover(io, { drivers: this.options.registry })).action;
    } catch (error) {
      return { outcome: isIcError(error) ? 'DETECTED_REFUSED' : 'UNTYPED_ERROR', detail: `recover: ${message(error)}`, ...(beforeRecovery ? { beforeRecovery } : {}) };
    }
    const extra = { recovery: action, ...(beforeRecovery ? { beforeRecovery } : {}), ...(beforeRecoveryDetail ? { beforeRecoveryDetail } : {}) };
    const still = await inspectInterrupted(io).catch(() => 'none' as const);
    if (still !== 'none') return { outcome: 'DETECTED_REFUSED', detail: `still marked '${still}' after recovery (${action})`, ...extra };
    const second = await this.look(io);
    switch (second.kind) {
      case 'intact':
        if (second.grown) return { outcome: 'OLD_INTACT_GROWN', detail: `intact but longer than before (recovery: ${action})`, ...extra };
        if (action === 'none') return { outcome: second.side === 'old' ? 'OLD_INTACT' : 'NEW_INTACT', detail: 'intact', leaks: second.leaks, ...extra };
        return { outcome: second.side === 'old' ? 'RECOVERED_OLD' : 'RECOVERED_NEW', detail: `intact after ${action}`, leaks: second.leaks, ...extra };
      case 'wrong':
        return { outcome: action === 'none' ? 'SILENT_BAD' : 'DATA_LOSS', detail: `after recovery (${action}): ${second.detail}`, ...extra };
      case 'refused':
        return { outcome: 'DETECTED_REFUSED', detail: `after recovery (${action}): ${second.detail}`, ...extra };
      case 'untyped':
        return { outcome: 'UNTYPED_ERROR', detail: `after recovery (${action}): ${second.detail}`, ...extra };
    }
  }
}
