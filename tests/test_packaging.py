"""
meshproxy installs as users install it: the twistd plugin file lands in
C{site-packages/twisted/plugins}, twistd lists it, and the console script
runs.  (A packaging change can drop the plugin silently, as it once did for
daphne: this test is the alarm.)
"""

import sysconfig

from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from .realprocess import run, tool


class PackagingTests(TestCase):
    def test_pluginInstalled(self):
        plugin = FilePath(sysconfig.get_paths()["purelib"]).descendant(["twisted", "plugins", "meshproxy_plugin.py"])
        self.assertTrue(plugin.isfile(), f"{plugin.path} is not installed: run the tests from an installed package (tox)")

    async def test_twistdListsPlugin(self):
        code, output = await run([tool("twistd", "the meshproxy package (pip install .)"), "--help"])
        self.assertEqual(code, 0, output)
        self.assertRegex(output.decode(), r"\n\s+meshproxy\s+A service-mesh sidecar proxy")

    async def test_consoleScript(self):
        code, output = await run([tool("meshproxy", "the meshproxy package (pip install .)"), "--help"])
        self.assertEqual(code, 0, output)
        self.assertIn(b"check", output)
