// The chat templates of the Qwen2.5, Qwen3 and Mistral instruct models' tokenizer_config.json,
// rendered on POST /v1/chat/completions (echo engine): ChatML with Qwen2.5's default system
// prompt, Qwen3's reasoning stripped from earlier turns, Mistral's [INST] turns and its refusal
// of turns that do not alternate. The templates are written out here in the shape the models
// ship, with the Jinja they rely on: namespaces, reversed slices, string methods, tests such as
// "is string" and "is defined", selectattr, tojson and raise_exception.
import { describe, expect, it } from 'vitest';
import { ChatTemplate } from '../src/http/openai/chat-template.js';
import { echoApp, expectOpenAiError, postTo } from './openai-fixtures.js';

const QWEN25_TEMPLATE = [
  '{%- if tools %}',
  "    {{- '<|im_start|>system\\n' }}",
  "    {%- if messages[0]['role'] == 'system' %}",
  "        {{- messages[0]['content'] }}",
  '    {%- else %}',
  "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}",
  '    {%- endif %}',
  '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}',
  '    {%- for tool in tools %}',
  '        {{- "\\n" }}',
  '        {{- tool | tojson }}',
  '    {%- endfor %}',
  '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}',
  '{%- else %}',
  "    {%- if messages[0]['role'] == 'system' %}",
  "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}",
  '    {%- else %}',
  "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}",
  '    {%- endif %}',
  '{%- endif %}',
  '{%- for message in messages %}',
  '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}',
  "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}",
  '    {%- elif message.role == "assistant" %}',
  "        {{- '<|im_start|>' + message.role }}",
  '        {%- if message.content %}',
  "            {{- '\\n' + message.content }}",
  '        {%- endif %}',
  '        {%- for tool_call in message.tool_calls %}',
  '            {%- if tool_call.function is defined %}',
  '                {%- set tool_call = tool_call.function %}',
  '            {%- endif %}',
  '            {{- \'\\n<tool_call>\\n{"name": "\' }}',
  '            {{- tool_call.name }}',
  '            {{- \'", "arguments": \' }}',
  '            {{- tool_call.arguments | tojson }}',
  "            {{- '}\\n</tool_call>' }}",
  '        {%- endfor %}',
  "        {{- '<|im_end|>\\n' }}",
  '    {%- elif message.role == "tool" %}',
  '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}',
  "            {{- '<|im_start|>user' }}",
  '        {%- endif %}',
  "        {{- '\\n<tool_response>\\n' }}",
  '        {{- message.content }}',
  "        {{- '\\n</tool_response>' }}",
  '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}',
  "            {{- '<|im_end|>\\n' }}",
  '        {%- endif %}',
  '    {%- endif %}',
  '{%- endfor %}',
  '{%- if add_generation_prompt %}',
  "    {{- '<|im_start|>assistant\\n' }}",
  '{%- endif %}',
  '',
].join('\n');

const QWEN3_TEMPLATE = [
  "{%- if messages[0].role == 'system' %}",
  "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}",
  '{%- endif %}',
  '{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}',
  '{%- for message in messages[::-1] %}',
  '    {%- set index = (messages|length - 1) - loop.index0 %}',
  "    {%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}",
  '        {%- set ns.multi_step_tool = false %}',
  '        {%- set ns.last_query_index = index %}',
  '    {%- endif %}',
  '{%- endfor %}',
  '{%- for message in messages %}',
  '    {%- if message.content is string %}',
  '        {%- set content = message.content %}',
  '    {%- else %}',
  "        {%- set content = '' %}",
  '    {%- endif %}',
  '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}',
  "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}",
  '    {%- elif message.role == "assistant" %}',
  "        {%- set reasoning_content = '' %}",
  '        {%- if message.reasoning_content is string %}',
  '            {%- set reasoning_content = message.reasoning_content %}',
  '        {%- else %}',
  "            {%- if '</think>' in content %}",
  "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}",
  "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}",
  '            {%- endif %}',
  '        {%- endif %}',
  '        {%- if loop.index0 > ns.last_query_index %}',
  '            {%- if loop.last or (not loop.last and reasoning_content) %}',
  "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}",
  '            {%- else %}',
  "                {{- '<|im_start|>' + message.role + '\\n' + content }}",
  '            {%- endif %}',
  '        {%- else %}',
  "            {{- '<|im_start|>' + message.role + '\\n' + content }}",
  '        {%- endif %}',
  "        {{- '<|im_end|>\\n' }}",
  '    {%- endif %}',
  '{%- endfor %}',
  '{%- if add_generation_prompt %}',
  "    {{- '<|im_start|>assistant\\n' }}",
  '    {%- if enable_thinking is defined and enable_thinking is false %}',
  "        {{- '<think>\\n\\n</think>\\n\\n' }}",
  '    {%- endif %}',
  '{%- endif %}',
].join('\n');

const MISTRAL_TEMPLATE = [
  '{%- if messages[0]["role"] == "system" %}',
  '    {%- set system_message = messages[0]["content"] %}',
  '    {%- set loop_messages = messages[1:] %}',
  '{%- else %}',
  '    {%- set loop_messages = messages %}',
  '{%- endif %}',
  '{%- if not tools is defined %}',
  '    {%- set tools = none %}',
  '{%- endif %}',
  '{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}',
  '{%- set ns = namespace() %}',
  '{%- set ns.index = 0 %}',
  '{%- for message in loop_messages %}',
  '    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}',
  '        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}',
  '            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}',
  '        {%- endif %}',
  '        {%- set ns.index = ns.index + 1 %}',
  '    {%- endif %}',
  '{%- endfor %}',
  '{{- bos_token }}',
  '{%- for message in loop_messages %}',
  '    {%- if message["role"] == "user" %}',
  '        {%- if loop.last and system_message is defined %}',
  '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}',
  '        {%- else %}',
  '            {{- "[INST] " + message["content"] + "[/INST]" }}',
  '        {%- endif %}',
  '    {%- elif message["role"] == "assistant" %}',
  '        {{- " " + message["content"]|trim + eos_token}}',
  '    {%- else %}',
  '        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}',
  '    {%- endif %}',
  '{%- endfor %}',
].join('\n');

// The special-token fields of each model's tokenizer_config.json (Qwen has no bos_token).
const QWEN_TOKENS = { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>', unk_token: null };
const MISTRAL_TOKENS = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' };

/** The prompt the route sends to the engine for these messages. */
async function rendered(template: ChatTemplate, messages: Array<{ role: string; content: string }>): Promise<string> {
  const { engine, app } = echoApp(template);
  const res = await postTo(app)('/v1/chat/completions', { model: 'demo', messages, max_tokens: 1 });
  expect(res.status).toBe(200);
  return engine.requests[0]!.text!;
}

describe('chat templates of the model families on /v1/chat/completions', () => {
  const qwen25 = ChatTemplate.fromTokenizerConfig({ ...QWEN_TOKENS, chat_template: QWEN25_TEMPLATE });
  const qwen3 = ChatTemplate.fromTokenizerConfig({ ...QWEN_TOKENS, chat_template: QWEN3_TEMPLATE });
  const mistral = ChatTemplate.fromTokenizerConfig({ ...MISTRAL_TOKENS, chat_template: MISTRAL_TEMPLATE });

  it("renders Qwen2.5's ChatML, with its default system prompt when none is given", async () => {
    expect(qwen25.unavailable).toBeNull();
    expect(await rendered(qwen25, [{ role: 'user', content: 'Hi' }])).toBe(
      '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' +
        '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
    );
    expect(
      await rendered(qwen25, [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello.' },
        { role: 'user', content: 'Bye' },
      ]),
    ).toBe(
      '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n' +
        '<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n',
    );
  });

  it("renders Qwen3's ChatML, dropping the reasoning of earlier turns", async () => {
    expect(
      await rendered(qwen3, [
        { role: 'user', content: 'A?' },
        { role: 'assistant', content: '<think>\nLet me see.\n</think>\n\nB.' },
        { role: 'user', content: 'C?' },
      ]),
    ).toBe('<|im_start|>user\nA?<|im_end|>\n<|im_start|>assistant\nB.<|im_end|>\n<|im_start|>user\nC?<|im_end|>\n<|im_start|>assistant\n');
  });

  it("renders Mistral's [INST] turns with the system message in the last one, and refuses turns out of order by the template's message", async () => {
    expect(
      await rendered(mistral, [
        { role: 'system', content: 'S' },
        { role: 'user', content: 'U1' },
        { role: 'assistant', content: ' A1 ' },
        { role: 'user', content: 'U2' },
      ]),
    ).toBe('<s>[INST] U1[/INST] A1</s>[INST] S\n\nU2[/INST]');
    const { app } = echoApp(mistral);
    const res = await postTo(app)('/v1/chat/completions', {
      model: 'demo',
      messages: [
        { role: 'user', content: 'a' },
        { role: 'user', content: 'b' },
      ],
    });
    await expectOpenAiError(res, 400, 'messages', 'the chat template rejected the messages', 'conversation roles must alternate');
  });
});
