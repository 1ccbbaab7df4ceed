// Calls meshd's JSON-RPC through npm `bitcoin-core` (a client written for bitcoind) as a
// user from --rpcauth, and prints what the calls answered as JSON (the Rust test checks it).
//
//   node rpc_client.js MODULE_DIR PORT USER PASSWORD
const [moduleDir, port, username, password] = process.argv.slice(2);
const Client = require(moduleDir);

async function main() {
  const client = new Client({ host: '127.0.0.1', port: Number(port), username, password, network: 'regtest', timeout: 30000 });
  const out = {};
  const call = async (name, method, ...params) => {
    try {
      out[name] = await client.command(method, ...params);
    } catch (e) {
      out[name] = { error: { code: e.code, message: e.message } };
    }
  };
  await call('getblockchaininfo', 'getblockchaininfo');
  await call('getnetworkinfo', 'getnetworkinfo');
  await call('generatetoaddress', 'generatetoaddress', 2, 'bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080');
  await call('getblockcount', 'getblockcount');
  await call('getchaintips', 'getchaintips');
  await call('getblockhash_2', 'getblockhash', 2);
  await call('unknown', 'getwalletinfo');
  // A batch, as bitcoin-core sends an array of calls.
  try {
    out.batch = await client.command([{ method: 'getblockhash', parameters: [1] }, { method: 'getblockhash', parameters: [9] }]);
  } catch (e) {
    out.batch = { error: { code: e.code, message: e.message } };
  }
  const wrong = new Client({ host: '127.0.0.1', port: Number(port), username, password: password + 'x', network: 'regtest', timeout: 30000 });
  try {
    out.wrong_password = await wrong.command('getblockcount');
  } catch (e) {
    out.wrong_password = { error: { code: e.code, message: e.message } };
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
