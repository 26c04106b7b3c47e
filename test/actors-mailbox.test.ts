import { MessageChannel } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { buffersOf, Mailbox, withTransfer } from '../src/actors/mailbox.js';
import { badRequest, TroupeError } from '../src/errors.js';

type CalcMsg =
  | { type: 'add'; a: number; b: number }
  | { type: 'fail'; why: string }
  | { type: 'crash' }
  | { type: 'double'; data: Float32Array }
  | { type: 'never' }
  | { type: 'note'; text: string };
interface CalcReplies {
  add: number;
  fail: void;
  crash: void;
  double: Float32Array;
  never: void;
  note: void;
}
type NoteMsg = { type: 'noted'; text: string };
interface NoteReplies {
  noted: void;
}

const channels: MessageChannel[] = [];
function pair() {
  const ch = new MessageChannel();
  channels.push(ch);
  const notes: string[] = [];
  const server = new Mailbox<CalcMsg, CalcReplies, NoteMsg, NoteReplies>(ch.port1, 'client');
  server.serve(async (msg) => {
    switch (msg.type) {
      case 'add':
        return msg.a + msg.b;
      case 'fail':
        throw badRequest(msg.why);
      case 'crash':
        throw new Error('boom');
      case 'double': {
        const out = msg.data.map((x) => x * 2);
        return withTransfer(out, buffersOf([out]));
      }
      case 'never':
        return new Promise<void>(() => {});
      case 'note':
        server.send({ type: 'noted', text: msg.text.toUpperCase() });
        return;
    }
  });
  const client = new Mailbox<NoteMsg, NoteReplies, CalcMsg, CalcReplies>(ch.port2, 'calc');
  client.serve((msg) => {
    notes.push(msg.text);
  });
  return { client, server, notes, ch };
}

afterEach(() => {
  for (const ch of channels.splice(0)) {
    ch.port1.close();
    ch.port2.close();
  }
});

describe('Mailbox', () => {
  it('correlates concurrent calls with their replies', async () => {
    const { client } = pair();
    const results = await Promise.all([1, 2, 3, 4].map((i) => client.call({ type: 'add', a: i, b: 10 })));
    expect(results).toEqual([11, 12, 13, 14]);
    expect(client.inFlight).toBe(0);
  });

  it('rebuilds a TroupeError on the caller side with its kind and message', async () => {
    const { client } = pair();
    const err = await client.call({ type: 'fail', why: 'prompt is empty' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TroupeError);
    expect((err as TroupeError).kind).toBe('invalid_request');
    expect((err as TroupeError).status).toBe(400);
    expect((err as TroupeError).message).toBe('prompt is empty');
    const internal = await client.call({ type: 'crash' }).catch((e: unknown) => e);
    expect((internal as TroupeError).kind).toBe('internal');
    expect((internal as TroupeError).message).toBe('boom');
    // The handler survives errors.
    expect(await client.call({ type: 'add', a: 1, b: 1 })).toBe(2);
  });

  it('sends one-way messages in both directions', async () => {
    const { client, notes } = pair();
    client.send({ type: 'note', text: 'hello' });
    // A call after the send is answered after it, so the note has arrived by then.
    await client.call({ type: 'add', a: 0, b: 0 });
    await new Promise((r) => setImmediate(r));
    expect(notes).toEqual(['HELLO']);
  });

  it('moves typed array buffers listed for transfer', async () => {
    const { client } = pair();
    const data = new Float32Array([1, 2, 3]);
    const out = await client.call({ type: 'double', data }, [data.buffer]);
    expect(data.byteLength).toBe(0); // detached: it was moved, not copied
    expect(out).toBeInstanceOf(Float32Array);
    expect([...out]).toEqual([2, 4, 6]);
  });

  it('fails outstanding calls when the peer goes away, and later calls at once', async () => {
    const { client, ch } = pair();
    const pending = client.call({ type: 'never' });
    ch.port1.close();
    await expect(pending).rejects.toThrow(/the calc actor is gone/);
    await expect(client.call({ type: 'add', a: 1, b: 2 })).rejects.toThrow(/the calc actor is gone/);
  });

  it('buffersOf lists each buffer once', () => {
    const buf = new ArrayBuffer(16);
    const a = new Int32Array(buf, 0, 2);
    const b = new Int32Array(buf, 8, 2);
    expect(buffersOf([a, b, null, new Float32Array(0)])).toEqual([buf]);
  });
});
