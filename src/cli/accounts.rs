//! `idsync accounts`: a Connection's synced accounts as the store keeps
//! them, read from the store's file (no cluster needed).

use std::io::Write;
use std::process::ExitCode;

use super::output::{
    CsvWriter, ItemFormat, JsonListWriter, ListFormat, NONE, Pages, ReportError, cell, finish, open_store_file,
    render_item, write_table,
};
use super::{AccountsCommand, ConnectionArgs};
use crate::model::{Account, ConnectionRef};
use crate::store::AccountStore;

/// The `kind` of `accounts list -o json`.
pub const ACCOUNT_LIST_KIND: &str = "AccountList";
const COLUMNS: [&str; 6] = ["ID", "USERNAME", "EMAIL", "NAME", "ENABLED", "GROUPS"];
const CSV_HEADER: [&str; 6] = ["id", "username", "email", "displayName", "enabled", "groups"];
/// Accounts read per store call.
const PAGE_SIZE: usize = 1000;
/// More groups than this show as a count in the table.
const MAX_LISTED_GROUPS: usize = 3;

/// Fails with the connections the store knows when it does not know `connection`.
pub fn ensure_connection(store: &dyn AccountStore, connection: &ConnectionRef) -> Result<(), ReportError> {
    let known = store.connections()?;
    if known.contains(connection) {
        Ok(())
    } else {
        Err(ReportError::UnknownConnection { connection: connection.clone(), known })
    }
}

fn text(value: &Option<String>) -> String {
    value.as_deref().filter(|v| !v.is_empty()).map_or_else(|| NONE.to_string(), cell)
}

pub fn account_row(account: &Account) -> Vec<String> {
    let groups = match account.groups.len() {
        0 => NONE.to_string(),
        n if n > MAX_LISTED_GROUPS => format!("{n} groups"),
        _ => cell(account.groups.join(",")),
    };
    vec![
        cell(&account.id),
        text(&account.username),
        text(&account.email),
        text(&account.display_name),
        account.enabled.to_string(),
        groups,
    ]
}

fn account_csv_record(account: &Account) -> Vec<String> {
    let plain = |v: &Option<String>| v.clone().unwrap_or_default();
    vec![
        account.id.clone(),
        plain(&account.username),
        plain(&account.email),
        plain(&account.display_name),
        account.enabled.to_string(),
        account.groups.join(";"),
    ]
}

/// `accounts list`: every account of the connection, ordered by id, read a
/// page at a time; CSV and JSON stream, the table (whose widths need every
/// row) holds its rows. Returns how many it printed; with none, the table
/// prints nothing (the caller says so, as kubectl does).
pub fn list_report(
    store: &dyn AccountStore,
    connection: &ConnectionRef,
    format: ListFormat,
    out: &mut impl Write,
) -> Result<usize, ReportError> {
    ensure_connection(store, connection)?;
    let accounts =
        Pages::new(PAGE_SIZE, |a: &Account| a.id.clone(), |after, limit| store.list_accounts(connection, after, limit));
    let mut count = 0;
    match format {
        ListFormat::Table => {
            let rows = accounts.map(|a| a.map(|a| account_row(&a))).collect::<Result<Vec<_>, _>>()?;
            count = rows.len();
            if !rows.is_empty() {
                write_table(&COLUMNS, &rows, out)?;
            }
        }
        ListFormat::Csv => {
            let mut csv = CsvWriter::begin(&mut *out, &CSV_HEADER)?;
            for account in accounts {
                csv.record(&account_csv_record(&account?))?;
                count += 1;
            }
            csv.finish()?;
        }
        ListFormat::Json => {
            let mut json = JsonListWriter::begin(&mut *out, ACCOUNT_LIST_KIND)?;
            for account in accounts {
                json.item(&account?)?;
                count += 1;
            }
            json.finish()?;
        }
    }
    out.flush()?;
    Ok(count)
}

/// `accounts get`: one account, whole, as the store keeps it.
pub fn get_report(
    store: &dyn AccountStore,
    connection: &ConnectionRef,
    id: &str,
    format: ItemFormat,
    out: &mut impl Write,
) -> Result<(), ReportError> {
    ensure_connection(store, connection)?;
    let account = store
        .get_account(connection, id)?
        .ok_or_else(|| ReportError::AccountNotFound { connection: connection.clone(), id: id.to_string() })?;
    render_item(&account, format, out)
}

/// `idsync accounts ...`: reads the store's file directly.
pub fn run(command: AccountsCommand) -> anyhow::Result<ExitCode> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let open = |target: &ConnectionArgs| -> anyhow::Result<_> {
        let (store, path) = open_store_file(target.store.as_deref())?;
        Ok((store, path, ConnectionRef::new(&target.namespace, &target.connection)))
    };
    let (path, result) = match &command {
        AccountsCommand::List { target, output } => {
            let (store, path, connection) = open(target)?;
            let format = ListFormat::from(*output);
            let listed = list_report(&*store, &connection, format, &mut out);
            let result = listed.map(|count| {
                if count == 0 && format == ListFormat::Table {
                    eprintln!("No accounts found in connection {connection}.");
                }
            });
            (path, result)
        }
        AccountsCommand::Get { id, target, output } => {
            let (store, path, connection) = open(target)?;
            (path, get_report(&*store, &connection, id, (*output).into(), &mut out))
        }
    };
    finish(result, &mut out, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Account;

    fn ada() -> Account {
        let mut a = Account::new("E1001");
        a.username = Some("ada".into());
        a.email = Some("ada@acme.example".into());
        a.display_name = Some("Ada\tLovelace".into());
        a.groups = vec!["a".into(), "b".into(), "c".into(), "d".into()];
        a
    }

    #[test]
    fn rows_show_what_kubectl_would_and_nothing_that_breaks_a_line() {
        assert_eq!(account_row(&ada()), ["E1001", "ada", "ada@acme.example", "Ada Lovelace", "true", "4 groups"]);
        let mut bare = Account::new("E2");
        bare.enabled = false;
        bare.groups = vec!["x".into(), "y".into()];
        assert_eq!(account_row(&bare), ["E2", "<none>", "<none>", "<none>", "false", "x,y"]);
        assert_eq!(account_csv_record(&bare), ["E2", "", "", "", "false", "x;y"]);
    }
}
