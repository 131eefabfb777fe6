"""Azure OpenAI: `POST {base}/openai/deployments/{deployment}/images/generations?api-version=V`
(the deployment is IMGSAVE_MODEL, in the path, not the body), header `api-key`; answers as
OpenAI does. The base URL is the resource's own (`https://NAME.openai.azure.com`)."""

from __future__ import annotations

from urllib.parse import quote

from imgsave.adapters.imageapi.kind import Kind
from imgsave.adapters.imageapi.kinds.openai import OpenAIWire
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings


class AzureWire(OpenAIWire):
    kind = "azure"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        super().__init__(base_url, None, settings)
        deployment = quote(model or "", safe="")
        self.url = (
            f"{base_url.rstrip('/')}/openai/deployments/{deployment}/images/generations"
            f"?api-version={quote(settings.api_version, safe='')}"
        )

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}


KIND = Kind(
    KindFacts(
        name="azure",
        default_base_url=None,
        key_variable="AZURE_OPENAI_API_KEY",
        needs_model=True,
        has_jobs=False,
        has_batch=True,
        model_hint="your deployment's name",
    ),
    wire=AzureWire,
    example_model="gpt-image-2",
    key_header="api-key",
)
