"""What the model description tells a client: `/v1/model` and gRPC GetModelInfo give the manifest without the
filesystem paths that its provenance and base_model record (where the model was trained, on what data),
and without the bundle's directory, unless `expose_paths` says otherwise. Hub ids ("org/name") stay."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest

from rmserve.proto import reward_pb2 as pb
from rmserve.proto import reward_pb2_grpc as pb_grpc
from rmserve.service.core.bundle import load_bundle, write_manifest
from tests.conftest import make_tiny_bundle
from tests.integration.server import running_server

SECRET_PLACES = ["/home/alice/rm-runs/run-7", "~/data/prefs.jsonl", "./checkpoints/base", "runs/2026/latest/ckpt"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = make_tiny_bundle(tmp_path_factory.mktemp("paths") / "bundle")
    manifest = load_bundle(directory).manifest
    provenance = {"checkpoint": SECRET_PLACES[0], "data": {"train": SECRET_PLACES[1], "dev": SECRET_PLACES[3]},
                  "hub_model": "Qwen/Qwen2.5-0.5B-Instruct", "epochs": 2}
    write_manifest(directory, manifest.model_copy(update={
        "provenance": provenance, "model": manifest.model.model_copy(update={"base_model": SECRET_PLACES[2]})}))
    return directory


def described(server) -> tuple[str, dict, dict]:
    """The /v1/model text and JSON, and GetModelInfo's manifest."""
    answer = httpx.get(server.url + "/v1/model", timeout=30)
    assert answer.status_code == 200, answer.text
    with grpc.insecure_channel(server.grpc_target) as channel:
        info = pb_grpc.RewardModelStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    return answer.text, answer.json(), json.loads(info.manifest_json)


def test_paths_are_hidden_by_default(bundle):
    with running_server(bundle) as server:
        text, http_info, grpc_manifest = described(server)
    for place in [*SECRET_PLACES, str(bundle), str(bundle.parent)]:
        assert place not in text and place not in json.dumps(grpc_manifest), place
    assert "bundle_path" not in http_info
    for manifest in (http_info["manifest"], grpc_manifest):
        assert manifest["provenance"]["checkpoint"] == "(path hidden)"
        assert manifest["provenance"]["hub_model"] == "Qwen/Qwen2.5-0.5B-Instruct" and manifest["provenance"]["epochs"] == 2
        assert manifest["model"]["base_model"] == "(path hidden)"
        assert manifest["bundle_id"] == "tiny"


def test_expose_paths_shows_them(bundle):
    with running_server(bundle, expose_paths="true") as server:
        text, http_info, grpc_manifest = described(server)
    assert http_info["bundle_path"] == str(bundle)
    for manifest in (http_info["manifest"], grpc_manifest):
        assert manifest["provenance"]["data"] == {"train": SECRET_PLACES[1], "dev": SECRET_PLACES[3]}
        assert manifest["model"]["base_model"] == SECRET_PLACES[2]
