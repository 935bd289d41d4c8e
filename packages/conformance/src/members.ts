/**
 * The kit's strictest rule: a capability a driver claims must be backed by the member that implements it, and a
 * member must not be present without its capability (the engine and the CLI trust the flags). The registry checks
 * what it can see on the driver object; these functions also look at what a target and an opened image offer.
 * Each returns the problems found, one sentence each, so that a test can assert them and a report can list them.
 */
import { CAPABILITY_HELP, DRIVER_API_VERSION, hasCapability, type Capabilities, type Driver, type Image, type InPlaceTarget } from '@ic/core';

const isFunction = (value: unknown): boolean => typeof value === 'function';

/** A claimed capability without its member, or a member without its capability, as one sentence. */
function agreement(driver: Driver, capability: keyof Capabilities, present: boolean, member: string, where = 'the driver'): string | undefined {
  const claimed = hasCapability(driver, capability);
  if (claimed && !present) return `${driver.name} claims capability '${capability}' but ${where} has no ${member}`;
  if (!claimed && present) return `${driver.name}: ${where} has ${member} but the driver does not claim capability '${capability}'`;
  return undefined;
}

/** Problems with the driver object itself: required members, API version, capability flags against members. */
export function driverMemberProblems(driver: Driver): string[] {
  const problems: (string | undefined)[] = [];
  const name = typeof driver?.name === 'string' ? driver.name : '(unnamed driver)';
  if (typeof driver?.name !== 'string' || !/^[a-z0-9][a-z0-9_-]*$/.test(driver.name)) problems.push(`${name}: name must be a lower-case qemu-img format name`);
  if (driver.apiVersion !== DRIVER_API_VERSION) problems.push(`${name} speaks driver API ${String(driver.apiVersion)}; this kit tests API ${DRIVER_API_VERSION}`);
  if (!isFunction(driver.probe)) problems.push(`${name} has no probe()`);
  if (!isFunction(driver.open)) problems.push(`${name} has no open()`);
  if (typeof driver.description !== 'string' || driver.description.length === 0) problems.push(`${name} has no description`);
  if (typeof driver.version !== 'string' || driver.version.length === 0) problems.push(`${name} has no version`);
  const capabilities = (driver.capabilities ?? {}) as Record<string, unknown>;
  for (const [flag, value] of Object.entries(capabilities)) {
    if (!(flag in CAPABILITY_HELP)) problems.push(`${name} declares unknown capability '${flag}'`);
    else if (typeof value !== 'boolean') problems.push(`${name}: capability '${flag}' must be true or false, not ${JSON.stringify(value)}`);
  }
  if (!hasCapability(driver, 'read')) problems.push(`${name} does not claim capability 'read', but open() is required and must read images`);
  problems.push(agreement(driver, 'create', isFunction(driver.create), 'create()'));
  const factory = driver.inPlace;
  problems.push(agreement(driver, 'inPlaceTarget', factory !== undefined, 'inPlace (the in-place target factory)'));
  if (factory !== undefined) {
    if (!isFunction(factory.create)) problems.push(`${name}: inPlace has no create()`);
    const range = factory.clusterSizes;
    if (!range || !Number.isSafeInteger(range.min) || !Number.isSafeInteger(range.max) || range.min <= 0 || range.min > range.max) {
      problems.push(`${name}: inPlace.clusterSizes must be { min, max } with 0 < min <= max (got ${JSON.stringify(range)})`);
    }
  }
  return problems.filter((problem): problem is string => problem !== undefined);
}

/** Problems with an in-place target the driver created for `clusterSize`: its layout and the build members. */
export function targetMemberProblems(driver: Driver, target: InPlaceTarget, clusterSize: number): string[] {
  const problems: (string | undefined)[] = [];
  const where = `the in-place target (${clusterSize}-byte clusters)`;
  if (!isFunction(target?.estimate)) problems.push(`${driver.name} claims capability 'inPlaceTarget' but ${where} has no estimate()`);
  if (!isFunction(target?.build)) problems.push(`${driver.name} claims capability 'inPlaceTarget' but ${where} has no build()`);
  if (!Array.isArray(target?.problems)) problems.push(`${driver.name}: ${where} has no problems list`);
  const layout = target?.layout;
  if (!layout) {
    problems.push(`${driver.name}: ${where} has no layout`);
    return problems.filter((problem): problem is string => problem !== undefined);
  }
  if (layout.clusterSize !== clusterSize) problems.push(`${driver.name}: ${where} reports layout.clusterSize ${layout.clusterSize}`);
  if (!Number.isSafeInteger(layout.headerRegionSize) || layout.headerRegionSize < 0) problems.push(`${driver.name}: ${where} has no valid layout.headerRegionSize`);
  if (!Number.isSafeInteger(layout.maxHostOffset) || layout.maxHostOffset <= 0) problems.push(`${driver.name}: ${where} has no valid layout.maxHostOffset`);
  if (typeof layout.zeroExtents !== 'boolean') problems.push(`${driver.name}: ${where} has no layout.zeroExtents`);
  else problems.push(agreement(driver, 'zeroExtents', layout.zeroExtents, 'way to record zero extents (layout.zeroExtents)', where));
  return problems.filter((problem): problem is string => problem !== undefined);
}

/** Problems with an opened image: the Image members, and the image-level capabilities (check, inPlaceSource). */
export function imageMemberProblems(driver: Driver, image: Image): string[] {
  const problems: (string | undefined)[] = [];
  for (const member of ['info', 'map', 'read', 'close'] as const) if (!isFunction(image?.[member])) problems.push(`${driver.name}: an opened image has no ${member}()`);
  problems.push(agreement(driver, 'check', isFunction(image?.check), 'check()', 'an opened image'));
  problems.push(agreement(driver, 'inPlaceSource', isFunction(image?.conversionSource), 'conversionSource()', 'an opened image'));
  if (isFunction(image?.info)) {
    const info = image.info();
    if (!Number.isSafeInteger(info?.virtualSize) || info.virtualSize < 0) problems.push(`${driver.name}: info().virtualSize is ${String(info?.virtualSize)}`);
    if (info?.backing && !hasCapability(driver, 'backing')) problems.push(`${driver.name}: an image names a backing file but the driver does not claim capability 'backing'`);
  }
  return problems.filter((problem): problem is string => problem !== undefined);
}

/** Fails with every problem listed at once (an assertion for the kit's tests). */
export function assertNoProblems(problems: readonly string[], what: string): void {
  if (problems.length > 0) throw new Error(`${what}:\n  - ${problems.join('\n  - ')}`);
}
