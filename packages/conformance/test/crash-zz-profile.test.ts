import { it } from 'vitest';
import { Registry } from '@ic/core';
import { qcow2Driver } from '@ic/qcow2';
import { vmdkDriver } from '@ic/vmdk';
import { qedDriver } from '@ic/qed';
import { rawDriver } from '@ic/raw';
import { buildCrashSource, crashShapes, runCrashCampaign, summariseCampaign } from '../src/crash/index.js';

it('timing', async () => {
  const registry = new Registry([qcow2Driver, vmdkDriver, qedDriver, rawDriver]);
  for (const [s, t, sh] of [['qcow2', 'vmdk', 'checkerboard'], ['vmdk', 'qcow2', 'full'], ['raw', 'qcow2', 'spread over a large sparse disk']] as const) {
    const shape = crashShapes.find((x) => x.name === sh)!;
    const built = await buildCrashSource(registry.get(s), shape, 65536);
    const r = await runCrashCampaign({ registry, sourceDriver: s, targetDriver: t, buildSource: async () => built.io, samples: 10000 });
    console.log(sh, summariseCampaign(r), JSON.stringify(r.beforeRecovery), r.recovery.result?.unique);
  }
}, 6000000);
