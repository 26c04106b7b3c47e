// The model's chat template (tokenizer_config.json's "chat_template", a Jinja template) rendered
// with @huggingface/jinja, as transformers' apply_chat_template does. The rendered text carries
// the special tokens as text (e.g. <|begin_of_text|>); the tokenizer turns them back into their
// ids and adds no others, so the prompt has each exactly once.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { badRequest } from '../../errors.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** A template that can be rendered, or the reason there is none (answered as a 400 on chat requests). */
export class ChatTemplate {
  private constructor(
    private readonly template: Template | null,
    private readonly tokens: Record<string, string>,
    readonly unavailable: string | null,
  ) {}

  /** From the fields of a tokenizer_config.json. */
  static fromTokenizerConfig(config: Record<string, unknown>, source = 'tokenizer_config.json'): ChatTemplate {
    // Special tokens are plain strings or AddedToken objects {"content": ...}.
    const tokens: Record<string, string> = {};
    for (const [key, v] of Object.entries(config)) {
      if (!key.endsWith('_token')) continue;
      if (typeof v === 'string') tokens[key] = v;
      else if (typeof v === 'object' && v !== null && typeof (v as { content?: unknown }).content === 'string') {
        tokens[key] = (v as { content: string }).content;
      }
    }
    let text = config.chat_template;
    // Some models ship several named templates; "default" is the one for plain chat.
    if (Array.isArray(text)) {
      const named = text as Array<{ name?: unknown; template?: unknown }>;
      text = named.find((t) => t.name === 'default')?.template;
    }
    if (typeof text !== 'string' || text === '') {
      return new ChatTemplate(null, tokens, `${source} has no chat_template, so this model cannot serve chat requests; use /v1/completions`);
    }
    try {
      return new ChatTemplate(new Template(text), tokens, null);
    } catch (err) {
      return new ChatTemplate(null, tokens, `the chat_template in ${source} does not parse: ${(err as Error).message}`);
    }
  }

  /** The template in tokenizerDir/tokenizer_config.json; none when the file is missing or unreadable. */
  static fromTokenizerDir(tokenizerDir: string): ChatTemplate {
    const file = join(tokenizerDir, 'tokenizer_config.json');
    if (!existsSync(file)) return new ChatTemplate(null, {}, `${file} does not exist, so this model has no chat template; use /v1/completions`);
    let config: unknown;
    try {
      config = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      return new ChatTemplate(null, {}, `cannot read the chat template from ${file}: ${(err as Error).message}`);
    }
    if (typeof config !== 'object' || config === null || Array.isArray(config)) {
      return new ChatTemplate(null, {}, `${file} is not a JSON object`);
    }
    return ChatTemplate.fromTokenizerConfig(config as Record<string, unknown>, file);
  }

  render(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    if (!this.template) throw badRequest(this.unavailable ?? 'this model has no chat template');
    try {
      return this.template.render({ ...this.tokens, messages, add_generation_prompt: addGenerationPrompt });
    } catch (err) {
      // Templates raise errors for conversations they refuse, e.g. roles out of order.
      throw badRequest(`the chat template rejected the messages: ${(err as Error).message}`);
    }
  }
}
