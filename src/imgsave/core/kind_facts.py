"""What a kind of image API is, as far as settings care: its name, where it is unless told
otherwise, where its key is found, and what it needs and offers. Pure data: each kind's module
(adapters/imageapi/kinds/) states its own, and the settings loader is handed them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KindFacts:
    name: str
    # None: the API lives at the user's own address (Azure), so IMGSAVE_BASE_URL is required.
    default_base_url: str | None
    # The variable the API's own SDKs read the key from (IMGSAVE_API_KEY comes first).
    key_variable: str
    # IMGSAVE_MODEL must be set (a model, an endpoint or a deployment is part of the path).
    needs_model: bool
    # The API answers with a job to poll, not with the images.
    has_jobs: bool
    # The API sells a Batch API imgsave can use (`generate --batch`).
    has_batch: bool
    # What IMGSAVE_MODEL names for this API, said when it is missing.
    model_hint: str = "the model's name"

    def no_image_api(self) -> str:
        """What a run that needs this image API, and was told of none, says."""
        if self.default_base_url is None:
            return (
                f"no image API: set IMGSAVE_BASE_URL to your {self.name} endpoint, and "
                "IMGSAVE_API_KEY"
            )
        return (
            f"no image API: set IMGSAVE_API_KEY (or {self.key_variable}), and IMGSAVE_BASE_URL "
            "for an API at another address"
        )

    def no_model(self) -> str:
        """What a run says when this API needs IMGSAVE_MODEL and it is not set."""
        return f"set IMGSAVE_MODEL ({self.model_hint}): the {self.name} API needs one"
