// The tokenizer pool's task file. piscina loads a task file with require(), and with import()
// only when that throws; on Node 20, require() of an ES module (tokenizer.worker.js) has aborted
// the whole process (a fatal v8::Module::IsGraphAsync on a module not yet instantiated, as two
// loads of it overlapped in a worker). So piscina requires this CommonJS file, and its tasks load
// the ES module with import(), once a thread.
type Tasks = typeof import('./tokenizer.worker.js');
let loading: Promise<Tasks> | null = null;
const tasks = (): Promise<Tasks> => (loading ??= import('./tokenizer.worker.js'));

export = {
  ready: async () => (await tasks()).ready(),
  encode: async (texts: Parameters<Tasks['encode']>[0]) => (await tasks()).encode(texts),
  decode: async (task: Parameters<Tasks['decode']>[0]) => (await tasks()).decode(task),
  tokenTexts: async (ids: Parameters<Tasks['tokenTexts']>[0]) => (await tasks()).tokenTexts(ids),
  detokenize: async (items: Parameters<Tasks['detokenize']>[0]) => (await tasks()).detokenize(items),
};
