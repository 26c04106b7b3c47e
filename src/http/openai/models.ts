// GET /v1/models and /v1/models/{model}: the base model and one entry per registered adapter,
// named "<served>:<adapter>" with parent set to the base, as SGLang lists LoRA adapters.
import type { Hono } from 'hono';
import type { AdapterStatus, TroupeEngine } from '../../api.js';
import { modelNotFound, openAiError } from './errors.js';

export interface ModelCard {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  root: string;
  parent: string | null;
  /** troupe's addition: the adapter statechart's state ("ready" for the base model). */
  state: string;
}

export function registerModels(app: Hono, engine: TroupeEngine, servedModelName: string): void {
  // One creation time for the server's life, so listings are stable.
  const created = Math.floor(Date.now() / 1000);
  const cards = async (): Promise<ModelCard[]> => {
    const base: ModelCard = {
      id: servedModelName, object: 'model', created, owned_by: 'troupe',
      root: engine.modelInfo().modelPath, parent: null, state: 'ready',
    };
    const adapter = (a: AdapterStatus): ModelCard => ({
      id: `${servedModelName}:${a.name}`, object: 'model', created, owned_by: 'troupe',
      root: a.path, parent: servedModelName, state: a.error !== null ? 'failed' : a.state,
    });
    return [base, ...(await engine.adapters()).map(adapter)];
  };

  app.get('/v1/models', async (c) => c.json({ object: 'list', data: await cards() }));

  app.get('/v1/models/:model{.+}', async (c) => {
    const id = c.req.param('model');
    const card = (await cards()).find((m) => m.id === id);
    return card ? c.json(card) : openAiError(c, modelNotFound(`the model ${JSON.stringify(id)} does not exist`));
  });
}
