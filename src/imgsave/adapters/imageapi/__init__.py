"""The image APIs. It imports only the core, `errors` and `logs`; httpx's errors become
imgsave's here.

- `client.py`: the Provider (one request per image, jobs polled, every answer capped, the key
  kept to where it belongs), with `failures.py` (how an image's request ends without an image),
  `retries.py` (the one retry policy, billing counted) and `key_scope.py` (where the key may go).
- `kinds/`: one module per kind of API (its facts and its wire), found as a registry; `kind.py`
  (what a kind says of itself), `wires.py` (APIs that answer with images), `jobs.py` (APIs
  that answer with a job to poll).
- Batch APIs: `batches.py` picks one for the kind (`batch_api.py` the interface,
  `batch_openai.py` OpenAI's and Azure's, `batch_gemini.py` Gemini's, `batch_http.py` the HTTP
  under both).
- `pace.py`: how fast requests start, learning from 429s.
- `downloads.py`, `netguard.py` (public addresses only), `url_check.py` (is a link still
  served), `tls.py` (the one TLS context).
"""
