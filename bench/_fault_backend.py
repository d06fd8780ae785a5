"""The fake OpenAI backend the fault matrix proxies to (uvicorn, own process): 8 tokens 20 ms apart; a
request containing "poison pill" makes it drop the connection unanswered, as an engine crashing on an input."""

from tests.gateway.fake_backend import FakeBackend, Knobs

app = FakeBackend(model="fake-model", knobs=Knobs(tokens=8, tbt_s=0.02, poison="poison pill"), record=False)
