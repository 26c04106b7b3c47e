// One HTTP call runs its jobs (prompts x samples) under one AbortSignal, and each job listens to it
// until the job ends: a batch of more than ten prompts must not make Node report a listener leak
// in the server's log.
import { describe, expect, it } from 'vitest';
import { Call } from '../src/http/jobs.js';

describe('an HTTP call with many jobs', () => {
  it('lets every job listen to the call signal without a listener-leak warning', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error): void => void warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const call = new Call(new Request('http://localhost/generate', { method: 'POST' }));
      const jobs = Array.from({ length: 64 }, () => (): void => {});
      for (const job of jobs) call.signal.addEventListener('abort', job, { once: true });
      // Node reports the warning on a later tick.
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(warnings).not.toContain('MaxListenersExceededWarning');
      let heard = 0;
      call.signal.addEventListener('abort', () => heard++);
      call.abort(new Error('stop'));
      expect(heard).toBe(1);
      for (const job of jobs) call.signal.removeEventListener('abort', job);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
