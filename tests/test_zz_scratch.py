from twisted.python.filepath import FilePath
from twisted.web.server import Site
from .test_h2_integration import HTTP2Tests
from .test_http_integration import Blob
from .realprocess import freePort, serve, tool, run

class Scratch(HTTP2Tests):
    async def test_load(self):
        port = await self.nghttpd()
        out = await self.tool("h2load", "-n", "5000", "-c", "10", "-m", "10", f"http://127.0.0.1:{port}/small")
        print(out[-300:])
        proxy, listen = await self.plainProxy(port)
        proxy.argv = (lambda orig: lambda: orig()[:3] + ["--profile=/tmp/h2work/prof.out", "--profiler=cprofile", "--savestats"] + orig()[3:])(proxy.argv)
        out = await self.tool("h2load", "-n", "5000", "-c", "10", "-m", "10", f"http://127.0.0.1:{listen}/small")
        print(out[-300:])
        docroot = FilePath(self.mktemp()); docroot.makedirs()
        docroot.child("huge").setContent(b"h" * (20 * 1024 * 1024))
        blob = await self.listen(Site(Blob(50 * 1024 * 1024)))
        client, server, listen = await self.twoProxies(blob)
        code, out = await run([tool("curl","curl"), "-sS", "--http1.1", "--data-binary", "@" + docroot.child("huge").path, "-w", " %{http_code} %{size_upload} %{time_total}", f"http://127.0.0.1:{listen}/"])
        print(out)
