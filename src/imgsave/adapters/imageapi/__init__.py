"""The image APIs: the client (`client.py`: requests, retries, what may have been billed), the
pace of requests (`pace.py`), downloads of provider URLs (`downloads.py`), the public-address
rule they obey (`netguard.py`) and the check of saved URLs (`url_check.py`); httpx's errors
become imgsave's here. It imports only the core, `errors` and `logs`."""
