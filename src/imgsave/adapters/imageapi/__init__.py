"""The image APIs: the client (`client.py`: requests, retries, what may have been billed), the
Batch APIs (`batches.py` picks one: `batch_api.py` the interface, `batch_openai.py` OpenAI's
and Azure's, `batch_gemini.py` Gemini's, `batch_http.py` the HTTP under both), the pace of
requests (`pace.py`), downloads of provider URLs (`downloads.py`), the public-address rule they
obey (`netguard.py`), the check of saved URLs (`url_check.py`) and the one TLS context they
share (`tls.py`); httpx's errors become imgsave's here. It imports only the core, `errors` and
`logs`."""
