//! ytcaption's actors and the libraries they wrap: the Transcriber and its Whisper engine, the
//! guarded outbound HTTP client and the Downloader.
//!
//! # Layout
//! - [`engine`]: Whisper on ONNX Runtime: audio decode, log-mel front end, tokenizer, model
//!   loading, greedy decoding with Whisper's rules, word alignment.
//! - [`transcriber`]: the Transcriber, the one owner of a loaded engine in a process.
//! - [`net`]: the outbound HTTP/1.1 client with its address guard (SSRF protection), shared by
//!   the Downloader and the webhook Notifier.
//! - [`download`]: the Downloader: direct HTTP(S) or yt-dlp, bounded, sniffed.

pub mod download;
pub mod engine;
pub mod net;
pub mod transcriber;
