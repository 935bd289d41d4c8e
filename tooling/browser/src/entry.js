// The browser build of ic: the engine (with the whole driver SDK), the qcow2 and QED drivers and the qemu-img
// output formatters, as one ES module. Bundled from the packages' published entry points (their dist/).
export * from '@ic/core';
export { qcow2Driver } from '@ic/qcow2';
export { qedDriver } from '@ic/qed';
export * from '@ic/qemu-output';
