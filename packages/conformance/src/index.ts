/**
 * The conformance kit every ic driver runs, ours and third parties'. A driver's test file is:
 *
 *   import { describeDriver } from '@ic/conformance';
 *   import { myDriver } from '../src/index.js';
 *   describeDriver(myDriver);
 *
 * Groups run according to the capabilities the driver declares, so a driver passes by declaring what it lacks,
 * never by skipping what it claims; a claimed capability whose member is missing (or a member without its
 * capability) fails. The qemu oracle helpers are in '@ic/conformance/qemu'.
 */
export { describeDriver, conformanceSuite, type ConformanceOptions, type KitGroup } from './suite.js';
export {
  describeMatrix,
  matrixCases,
  shapePairCases,
  identityPairCases,
  isIdentityTarget,
  samplePairCase,
  registerCases,
  KIT_CASE_TIMEOUT,
  expectConvertedImage,
  canBuildAndConvert,
  supportsClusterSize,
  type KitCase,
  type MatrixOptions,
} from './matrix.js';
export { driverMemberProblems, targetMemberProblems, imageMemberProblems, assertNoProblems } from './members.js';
export { kitClusterSizes } from './cluster-sizes.js';
export { coverageOf, type Coverage } from './coverage.js';
export { installedPartners, BUNDLED_PARTNERS } from './partners.js';
export { loadSamples, expectedGuestContent, type Sample, type SampleSource, type SampleExpectation, type LoadedSample } from './samples.js';
export {
  expectedWindow,
  expectImageContent,
  expectSameContent,
  metadataRangesOf,
  runTargetBuild,
  buildShape,
  copyToMemory,
  flatReference,
  type BuiltShape,
} from './images.js';
export { shapes, pattern, type Shape } from './shapes.js';
export type { ImageContent } from '@ic/core';
export * from './crash/index.js';
