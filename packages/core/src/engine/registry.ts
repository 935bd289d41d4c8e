import { capabilityMismatch, DRIVER_API_VERSION, hasCapability, IcError, type Capabilities, type Driver } from '../sdk/index.js';
import type { BlockIO } from '../sdk/index.js';

/** How many bytes of a file probing looks at. */
export const PROBE_LENGTH = 64 * 1024;

export interface ProbeResult {
  driver: Driver;
  score: number;
}

/** The set of installed drivers. The engine and the CLI find formats here, never by naming them. */
export class Registry {
  private readonly drivers = new Map<string, Driver>();

  constructor(drivers: Iterable<Driver> = []) {
    for (const driver of drivers) this.register(driver);
  }

  register(driver: Driver): void {
    if (typeof driver?.name !== 'string' || !/^[a-z0-9][a-z0-9_-]*$/.test(driver.name)) {
      throw new IcError('INVALID', `driver has no valid name (got ${JSON.stringify(driver?.name)})`);
    }
    if (driver.apiVersion !== DRIVER_API_VERSION) {
      throw new IcError('UNSUPPORTED', `driver ${driver.name} speaks driver API ${driver.apiVersion}; this @ic/core speaks ${DRIVER_API_VERSION}`);
    }
    if (typeof driver.probe !== 'function' || typeof driver.open !== 'function') {
      throw new IcError('INVALID', `driver ${driver.name} lacks probe() or open()`);
    }
    const mismatch = capabilityMismatch(driver);
    if (mismatch) throw new IcError('INVALID', mismatch);
    if (this.drivers.has(driver.name)) throw new IcError('INVALID', `a driver named ${driver.name} is already registered`);
    this.drivers.set(driver.name, driver);
  }

  list(): Driver[] {
    return [...this.drivers.values()];
  }

  with(capability: keyof Capabilities): Driver[] {
    return this.list().filter((driver) => hasCapability(driver, capability));
  }

  find(name: string): Driver | undefined {
    return this.drivers.get(name);
  }

  get(name: string): Driver {
    const driver = this.drivers.get(name);
    if (!driver) {
      const known = this.list().map((d) => d.name).join(', ');
      throw new IcError('INVALID', `unknown format '${name}' (installed: ${known || 'none'})`);
    }
    return driver;
  }

  /** Scores of every driver for these bytes, best first; drivers that answer 0 are left out. */
  probeBytes(head: Uint8Array, fileSize: number, tail?: Uint8Array): ProbeResult[] {
    const results: ProbeResult[] = [];
    for (const driver of this.drivers.values()) {
      let score = 0;
      try {
        score = driver.probe(head, fileSize, tail);
      } catch {
        score = 0; // a probe must not throw; one that does is treated as "not mine"
      }
      if (score > 0) results.push({ driver, score: Math.min(100, score) });
    }
    return results.sort((a, b) => b.score - a.score);
  }

  /** The best driver for a file; WRONG_FORMAT when no driver claims it. */
  async probe(io: BlockIO): Promise<Driver> {
    const size = await io.size();
    const head = await io.read(0, Math.min(PROBE_LENGTH, size));
    const tailLength = Math.min(PROBE_LENGTH, size);
    const tail = tailLength === head.length ? head : await io.read(size - tailLength, tailLength);
    const [best] = this.probeBytes(head, size, tail);
    if (!best) throw new IcError('WRONG_FORMAT', `${io.name}: no installed driver recognises this file`, { path: io.name });
    return best.driver;
  }
}
