"""The fast fake OpenAI backend the overhead benchmark proxies to (run by uvicorn in its own process)."""

from tests.gateway.fake_backend import FakeBackend, Knobs

app = FakeBackend(model="fake-model", knobs=Knobs(tokens=8), record=False)
