// Shapes shared by the tokenizer pool and its worker.

/** Paths of the Hugging Face tokenizer files; each thread reads and parses them itself. */
export interface TokenizerWorkerData {
  tokenizerFile: string;
  tokenizerConfigFile: string | null;
}

/** What a thread learns about the tokenizer when it loads it. */
export interface TokenizerFacts {
  /** The most UTF-8 bytes of input one token stands for; null when no such bound holds. */
  maxTokenBytes: number | null;
}

/** One sequence's incremental detokenization step; offsets index into ids. */
export interface DetokItem {
  ids: number[];
  prefixOffset: number;
  readOffset: number;
  skipSpecialTokens: boolean;
  /** Last call for this sequence: emit held-back partial characters too. */
  final: boolean;
}

export interface DetokResult {
  text: string;
  prefixOffset: number;
  readOffset: number;
}
