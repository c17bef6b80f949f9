// Package upstreamsim is a small, fast simulator of DeepSeek's OpenAI-compatible
// chat completions API. It is the default upstream of `make run`, of the tests
// and of the benchmarks, so the gateway can be exercised, reconciled and
// measured without a live key.
//
// # Endpoints
//
//	POST   /chat/completions, /v1/chat/completions   DeepSeek chat completions
//	GET    /models, /v1/models                        deepseek-v4-flash, deepseek-v4-pro,
//	                                                  deepseek-chat, deepseek-reasoner
//	GET    /_sim/healthz                              200 "ok"
//	GET    /_sim/stats                                Stats as JSON
//	POST   /_sim/reset                                zero Stats, clear faults and the prompt cache
//	GET    /_sim/faults                               the global fault now in force
//	POST   /_sim/faults                               set the global fault (see below)
//	DELETE /_sim/faults                               clear it
//
// When Config.APIKey or Config.APIKeys is set the chat and model endpoints
// require "Authorization: Bearer <key>" with one of those keys; the /_sim/
// control API never does. Each key is an upstream account of its own, as
// behind a pool of several DeepSeek keys: it has its own prompt cache.
//
// # Behaviour
//
// Responses have the shapes DeepSeek sends: a "chat.completion" object, or a
// stream of "chat.completion.chunk" Server-Sent Events. A stream starts with a
// delta {"role":"assistant","content":""}, then one reasoning_content delta per
// reasoning token (thinking mode), then one content delta per answer token (or,
// for a tool call, a tool_calls delta naming the function followed by one
// arguments delta per token), then an empty delta carrying finish_reason, then,
// only when stream_options.include_usage is true, a chunk with "choices":[] and
// the usage, then "data: [DONE]" (OpenAI's shape; with include_usage every
// other chunk carries "usage":null). DeepSeek's real API instead puts the usage
// on the finish chunk and sends no usage-only chunk: the usage_on_finish knob,
// or Config.UsageOnFinish for every stream, selects that shape. Every event is
// flushed as it is written.
//
// Thinking mode is on when the request has thinking {"type":"enabled"}, or the
// model is deepseek-reasoner and thinking is not {"type":"disabled"}, or
// Config.ThinkingByDefault is set (the real V4 models think unless told not to)
// and thinking is not disabled. deepseek-chat never thinks.
//
// Like DeepSeek the simulator answers 400 when an input assistant message
// carries reasoning_content but no tool_calls, and, in thinking mode, when an
// assistant message with tool_calls lacks its reasoning_content. The first
// check fires whenever reasoning_content is present and not null, even if empty.
//
// When tools are given, tool_choice is not "none" and the last message is from
// the user, the answer is one call to the first tool (or the tool that
// tool_choice names) with finish_reason "tool_calls". When the last message is a
// tool result the answer is ordinary text. With response_format
// {"type":"json_object"} the content is a JSON object.
//
// Errors have DeepSeek's body {"error":{"message","type","param","code"}}:
// 400 for malformed JSON, a missing model or messages, an unknown model ("Model
// Not Exist") or a bad message sequence; 422 for a parameter out of range
// (temperature, top_p, max_tokens); 401 for a bad key; and any status a knob
// asks for, with DeepSeek's wording for 400, 401, 402 (Insufficient Balance),
// 422, 429, 500 and 503 (Server Overloaded).
//
// # Token accounting
//
// Every number is deterministic:
//
//   - A word is a maximal run of non-whitespace characters, except that every
//     CJK character (Han, Hiragana, Katakana, Hangul) is a word on its own.
//   - A message costs MessageOverheadTokens (4) plus the words of its text
//     content (string, or the text parts of an array), of its
//     reasoning_content, and of each tool call's function name and arguments.
//   - A tool definition costs ToolOverheadTokens (8) plus the words of its
//     function name and description (parameters are free).
//   - prompt_tokens is the sum over tools and messages. The #sim directive, if
//     any, is ordinary text and counts.
//   - completion_tokens is N: the tokens knob if given, else DefaultTokens
//     capped at max_tokens (finish_reason "length" when the cap bites).
//   - In thinking mode reasoning_tokens is R: the reasoning knob (capped at N) if
//     given, else N/2 rounded down. R reasoning tokens are emitted first and the
//     answer gets the remaining N-R, so completion_tokens is always N and
//     includes R. Outside thinking mode R is 0.
//   - The answer, or a tool call's arguments, is N-R tokens: one word per token,
//     one token per stream chunk. In JSON mode the first token opens
//     {"answer":" and the last closes it; tool arguments are {"input":"..."}
//     the same way. With no tokens the JSON is {} and costs nothing.
//   - total_tokens = prompt_tokens + completion_tokens, and
//     completion_tokens_details.reasoning_tokens = R.
//
// # Prompt cache
//
// The simulator imitates DeepSeek's prefix cache at the granularity of whole
// messages, per account: the bearer key the request presented (any key, or
// none, when no key is configured). The prompt is the tools block followed by
// the messages; the cached units are its prefixes ending at each message,
// keyed by the account, the model, the tools and those messages, so a prefix
// one key sent never makes a hit for another key. prompt_cache_hit_tokens is the token count of the longest
// such prefix seen before (tools included), or 0; prompt_cache_miss_tokens is
// the rest, so hit + miss == prompt_tokens always. Every prefix of a request is
// remembered when its usage is computed. The cache holds at most
// Config.CacheEntries prefixes over all accounts (oldest dropped first,
// roughly) and is shared by concurrent requests. The cache is consulted exactly when the simulator starts
// an answer (after any delay), never for errors or hangs.
//
// # Knobs
//
// The gateway does not forward arbitrary client headers, so a test steers one
// request with a directive anywhere in the content of the LAST message whose
// role is "user":
//
//	#sim key=value key2=value2 ...
//
// The directive runs to the end of its line; keys are:
//
//	status=<400..599>    answer with that DeepSeek-style error (after any delay)
//	delay_ms=<n>         wait n ms before the first byte
//	hang                 never answer; return when the client goes away
//	cut_after=<n>        stream: close the connection abruptly after n token
//	                     chunks (reasoning, content or tool arguments; all of
//	                     them if there are fewer), so no finish chunk, usage or
//	                     [DONE]; non-stream: close without any response
//	tokens=<n>           completion tokens N (max_tokens does not cap it)
//	reasoning=<n>        reasoning tokens R in thinking mode
//	chunk_delay_ms=<n>   wait n ms between stream events
//	keepalive=<n>        send n keep-alives before the answer: ": keep-alive"
//	                     comments for a stream, empty lines before a JSON body
//	usage_on_finish      stream with include_usage: usage on the finish chunk
//	                     (DeepSeek's shape), no "choices":[] chunk;
//	                     usage_on_finish=false gives OpenAI's shape under
//	                     Config.UsageOnFinish
//
// An unknown key or a bad value is a 400. POST /_sim/faults sets the same knobs
// for the next count requests, globally, as JSON:
//
//	{"status":503,"delay_ms":0,"hang":false,"cut_after":3,"tokens":5,
//	 "reasoning":2,"chunk_delay_ms":0,"keepalive":0,"usage_on_finish":true,"count":2}
//
// count > 0 applies the fault to that many requests, -1 to every request until
// cleared, 0 clears it. A directive overrides the fault key by key. Only chat
// requests that pass authentication and validation consume the fault.
//
// # Stats
//
// Counters are atomic and cover the chat endpoints only. Their JSON names:
//
//	requests            chat requests received
//	in_flight           chat requests being handled now (not zeroed by reset)
//	streams             of requests, those that asked for a stream and started one
//	by_status           {"<code>": n}: status line written, 200 included
//	completed           200 answers written in full (non-stream body; stream [DONE])
//	errors              error responses written (status >= 400)
//	cancelled           the client went away first (during a delay, a hang, or
//	                    mid-stream) or the server shut down under a hang
//	cut                 connections the simulator cut on purpose (cut_after)
//
//	prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens,
//	reasoning_tokens    sums of the usage REPORTED to clients: a non-stream body
//	                    written, or a stream's usage chunk written
//
//	unreported_requests answers started (usage computed) whose usage was never
//	                    reported: cut, client gone, or a stream without
//	                    include_usage
//	unreported_prompt_tokens, unreported_cache_hit_tokens,
//	unreported_cache_miss_tokens
//	                    their prompt usage
//	unreported_completion_tokens, unreported_reasoning_tokens
//	                    the completion tokens actually SENT to them (token
//	                    chunks written), reasoning included in completion
//
// Once no request is in flight, requests == completed + errors + cancelled + cut.
// Reset is not atomic with respect to requests in flight.
package upstreamsim
