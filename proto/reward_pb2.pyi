from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepAggregate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_AGGREGATE_UNSPECIFIED: _ClassVar[StepAggregate]
    STEP_AGGREGATE_MIN: _ClassVar[StepAggregate]
    STEP_AGGREGATE_LAST: _ClassVar[StepAggregate]
    STEP_AGGREGATE_MEAN: _ClassVar[StepAggregate]
    STEP_AGGREGATE_PROD: _ClassVar[StepAggregate]

class RewardValues(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REWARD_VALUES_UNSPECIFIED: _ClassVar[RewardValues]
    REWARD_VALUES_RAW: _ClassVar[RewardValues]
    REWARD_VALUES_NORMALIZED: _ClassVar[RewardValues]
    REWARD_VALUES_GROUP: _ClassVar[RewardValues]
STEP_AGGREGATE_UNSPECIFIED: StepAggregate
STEP_AGGREGATE_MIN: StepAggregate
STEP_AGGREGATE_LAST: StepAggregate
STEP_AGGREGATE_MEAN: StepAggregate
STEP_AGGREGATE_PROD: StepAggregate
REWARD_VALUES_UNSPECIFIED: RewardValues
REWARD_VALUES_RAW: RewardValues
REWARD_VALUES_NORMALIZED: RewardValues
REWARD_VALUES_GROUP: RewardValues

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Conversation(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("text", "messages")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    text: str
    messages: Conversation
    def __init__(self, text: _Optional[str] = ..., messages: _Optional[_Union[Conversation, _Mapping]] = ...) -> None: ...

class ScoreItem(_message.Message):
    __slots__ = ("prompt", "response", "steps", "reference")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    response: str
    steps: Steps
    reference: str
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., response: _Optional[str] = ..., steps: _Optional[_Union[Steps, _Mapping]] = ..., reference: _Optional[str] = ...) -> None: ...

class Steps(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, steps: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "responses", "items", "values", "response_steps", "aggregate", "reference", "verifiers")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_STEPS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    responses: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    values: RewardValues
    response_steps: _containers.RepeatedCompositeFieldContainer[Steps]
    aggregate: StepAggregate
    reference: str
    verifiers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., responses: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., values: _Optional[_Union[RewardValues, str]] = ..., response_steps: _Optional[_Iterable[_Union[Steps, _Mapping]]] = ..., aggregate: _Optional[_Union[StepAggregate, str]] = ..., reference: _Optional[str] = ..., verifiers: _Optional[_Iterable[str]] = ...) -> None: ...

class StepRewards(_message.Message):
    __slots__ = ("rewards", "steps_cut")
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_CUT_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.RepeatedScalarFieldContainer[float]
    steps_cut: int
    def __init__(self, rewards: _Optional[_Iterable[float]] = ..., steps_cut: _Optional[int] = ...) -> None: ...

class VerifierOutcome(_message.Message):
    __slots__ = ("type", "passed", "value", "detail")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    type: str
    passed: bool
    value: float
    detail: str
    def __init__(self, type: _Optional[str] = ..., passed: _Optional[bool] = ..., value: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("mode", "model", "combined", "verifiers")
    class VerifiersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: VerifierOutcome
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[VerifierOutcome, _Mapping]] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COMBINED_FIELD_NUMBER: _ClassVar[int]
    VERIFIERS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    model: float
    combined: float
    verifiers: _containers.MessageMap[str, VerifierOutcome]
    def __init__(self, mode: _Optional[str] = ..., model: _Optional[float] = ..., combined: _Optional[float] = ..., verifiers: _Optional[_Mapping[str, VerifierOutcome]] = ...) -> None: ...

class GroupStats(_message.Message):
    __slots__ = ("mean", "std", "advantages", "eps")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    EPS_FIELD_NUMBER: _ClassVar[int]
    mean: float
    std: float
    advantages: _containers.RepeatedScalarFieldContainer[float]
    eps: float
    def __init__(self, mean: _Optional[float] = ..., std: _Optional[float] = ..., advantages: _Optional[_Iterable[float]] = ..., eps: _Optional[float] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("bundle_id", "model_sha256", "normalization_version", "calibration_temperature")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    model_sha256: str
    normalization_version: str
    calibration_temperature: float
    def __init__(self, bundle_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., normalization_version: _Optional[str] = ..., calibration_temperature: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "rewards", "normalized_rewards", "truncated", "values", "group", "step_rewards", "aggregate", "verification")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_REWARDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    STEP_REWARDS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    rewards: _containers.RepeatedScalarFieldContainer[float]
    normalized_rewards: _containers.RepeatedScalarFieldContainer[float]
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    values: _containers.RepeatedScalarFieldContainer[float]
    group: GroupStats
    step_rewards: _containers.RepeatedCompositeFieldContainer[StepRewards]
    aggregate: str
    verification: _containers.RepeatedCompositeFieldContainer[Verification]
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., rewards: _Optional[_Iterable[float]] = ..., normalized_rewards: _Optional[_Iterable[float]] = ..., truncated: _Optional[_Iterable[bool]] = ..., values: _Optional[_Iterable[float]] = ..., group: _Optional[_Union[GroupStats, _Mapping]] = ..., step_rewards: _Optional[_Iterable[_Union[StepRewards, _Mapping]]] = ..., aggregate: _Optional[str] = ..., verification: _Optional[_Iterable[_Union[Verification, _Mapping]]] = ...) -> None: ...

class CompareRequest(_message.Message):
    __slots__ = ("prompt", "response_a", "response_b")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_A_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_B_FIELD_NUMBER: _ClassVar[int]
    prompt: Prompt
    response_a: str
    response_b: str
    def __init__(self, prompt: _Optional[_Union[Prompt, _Mapping]] = ..., response_a: _Optional[str] = ..., response_b: _Optional[str] = ...) -> None: ...

class CompareResponse(_message.Message):
    __slots__ = ("model", "reward_a", "reward_b", "normalized_reward_a", "normalized_reward_b", "probability_a")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REWARD_A_FIELD_NUMBER: _ClassVar[int]
    REWARD_B_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_REWARD_A_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_REWARD_B_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_A_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    reward_a: float
    reward_b: float
    normalized_reward_a: float
    normalized_reward_b: float
    probability_a: float
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., reward_a: _Optional[float] = ..., reward_b: _Optional[float] = ..., normalized_reward_a: _Optional[float] = ..., normalized_reward_b: _Optional[float] = ..., probability_a: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "provider", "max_length", "manifest_json", "max_responses_per_request")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    provider: str
    max_length: int
    manifest_json: str
    max_responses_per_request: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., provider: _Optional[str] = ..., max_length: _Optional[int] = ..., manifest_json: _Optional[str] = ..., max_responses_per_request: _Optional[int] = ...) -> None: ...
