/**
 * @ic/conformance/qemu — the qemu oracle for driver tests (Node only): typed qemu-img/qemu-io wrappers, samples
 * made by qemu's own tools, and the check that a converted image is still usable by qemu.
 */
export * from './tools.js';
export { qemuSamples, expectUsableWithQemu, writeSparseFile, type QemuSampleSpec, type QemuUsability, type UsabilityRequest } from './oracle.js';
